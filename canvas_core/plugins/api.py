"""The public registry functions: ``register_* / create_* / list_* / unregister_*`` per kind.

All work on the default :class:`~canvas_core.plugins.host.PluginHost` (``use_host`` swaps it).
``register_attention`` (and every ``register_*``) has three forms::

    register_attention("my_attn", MyAttention, family="Dot-product")   # call
    register_attention("my_attn", "my_pkg.attn:MyAttention")            # lazy call

    @register_attention("my_attn", family="Dot-product")                # decorator with a name
    class MyAttention(nn.Module): ...

    @register_attention                                                  # bare decorator:
    class MyAttention(nn.Module): ...                                    # name = cls.name or "my_attention"

In-process registrations are reported with distribution ``"<in-process>"`` and the calling module.
"""

from __future__ import annotations

import inspect
import re
import sys
from typing import Any, Callable, List, Optional

from canvas_core.errors import CanvasTypeError
from canvas_core.plugins.host import get_host
from canvas_core.plugins.registry import RegistryView
from canvas_core.plugins.spec import Spec

__all__ = [
    "register_attention", "create_attention", "list_attention_types", "unregister_attention",
    "register_kernel", "create_kernel", "list_kernels", "unregister_kernel",
    "register_backbone", "create_backbone", "list_backbones", "unregister_backbone",
    "register_identity_binder", "create_identity_binder", "list_identity_binders",
    "unregister_identity_binder",
    "register_embedder", "create_embedder", "list_embedders", "unregister_embedder",
    "get_registry", "get_spec", "get_attention_spec", "get_kernel_spec",
    "ATTENTION_REGISTRY", "KERNEL_REGISTRY", "BACKBONE_REGISTRY", "IDENTITY_REGISTRY",
    "EMBEDDER_REGISTRY", "snake_case",
]


def snake_case(name: str) -> str:
    """``MyFancyAttention`` -> ``my_fancy_attention``; ``HTTPAttention`` -> ``http_attention``."""
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    return s.lower()


def _derived_name(obj: Any) -> str:
    attr = getattr(obj, "name", None)
    if isinstance(attr, str) and attr:
        return attr
    base = getattr(obj, "__name__", None)
    if not base:
        raise CanvasTypeError(f"cannot derive a registry name from {obj!r}; pass the name explicitly")
    return snake_case(base)


def _caller_module(depth: int = 2) -> Optional[str]:
    try:
        return sys._getframe(depth).f_globals.get("__name__")
    except Exception:  # pragma: no cover - non-CPython
        return None


def _make_register(kind: str, noun: str) -> Callable[..., Any]:
    def register(name: Any = None, factory: Any = None, *, override: bool = False, **metadata: Any) -> Any:
        module = _caller_module()
        if factory is None and "cls" in metadata:  # canvas-engineering spelling: register_attention(name, cls=...)
            factory = metadata.pop("cls")
        if factory is not None:
            return get_host().register(kind, name, factory, override=override, module=module, **metadata)
        if isinstance(name, Spec):
            return get_host().register(kind, name, override=override, module=module)
        if name is not None and not isinstance(name, str):  # bare decorator / register_x(Class)
            obj = name
            get_host().register(kind, _derived_name(obj), obj, override=override, module=module, **metadata)
            return obj

        def decorate(obj: Any) -> Any:
            get_host().register(kind, name if name is not None else _derived_name(obj), obj,
                                override=override, module=module, **metadata)
            return obj

        return decorate

    register.__name__ = register.__qualname__ = f"register_{noun}"
    register.__doc__ = (
        f"Register a {kind} entry in-process: ``register_{noun}(name, factory, **metadata)``, or as a "
        f"decorator ``@register_{noun}('name', **metadata)`` / ``@register_{noun}`` (name from the "
        "object's ``name`` attribute, else its snake-cased ``__name__``).\n\n"
        "``factory`` is a class / callable or a lazy ``'package.module:Object'`` string; metadata as "
        "in :mod:`canvas_core.plugins.hookspecs` (``family``, ``requires``, ``devices``, ...). "
        "``override=True`` replaces an existing name (otherwise DuplicateRegistrationError). "
        "The call form returns the Spec, the decorator forms return the decorated object.")
    return register


def _make_unregister(kind: str, noun: str) -> Callable[[str], Spec]:
    def unregister(name: str) -> Spec:
        return get_host().unregister(kind, name)

    unregister.__name__ = unregister.__qualname__ = f"unregister_{noun}"
    unregister.__doc__ = (f"Remove the current {kind} registration ``name`` (an overridden one comes back); "
                          "returns the removed Spec.")
    return unregister


def _make_list(kind: str, fname: str) -> Callable[[], List[str]]:
    def list_names() -> List[str]:
        return get_host().registry(kind).names()

    list_names.__name__ = list_names.__qualname__ = fname
    list_names.__doc__ = f"Sorted names in the {kind} registry (plugins loaded on first call)."
    return list_names


def _make_create(kind: str, fname: str) -> Callable[..., Any]:
    def create(name: str, *args: Any, **kwargs: Any) -> Any:
        return get_host().registry(kind).get(name).create(*args, **kwargs)

    create.__name__ = create.__qualname__ = fname
    create.__doc__ = (f"Build the {kind} entry ``name``: ``factory(*args, **kwargs)``.\n\n"
                      "Raises UnknownNameError, PluginLoadError or UnavailableError (missing package).")
    return create


# ---------------------------------------------------------------------- attention
register_attention = _make_register("attention", "attention")
unregister_attention = _make_unregister("attention", "attention")
list_attention_types = _make_list("attention", "list_attention_types")


def _accepts(factory: Any) -> Optional[set]:
    """Keyword names ``factory`` accepts, or None when it takes ``**kwargs`` / is opaque."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    names = set()
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            return None
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.add(p.name)
    return names


def create_attention(fn_name: str, d_model: int, n_heads: int = 4, dropout: float = 0.0, **kwargs: Any) -> Any:
    """Build attention type ``fn_name``: ``factory(d_model=, n_heads=, dropout=, **kwargs)``.

    The result is an ``nn.Module`` called as ``module(queries, keys, values, key_mask=None)``:
    ``(B, Nq, D), (B, Nk, D), (B, Nk, D) -> (B, Nq, D)``.  ``kwargs`` are type-specific
    (``top_k`` for ``sparse_attention``, ``window_size`` for ``local_attention``,
    ``kernel=`` for types with their own kernels, ...).  A factory that takes no ``n_heads`` /
    ``dropout`` parameter is called without them (``dropout`` only when it is 0).

    Raises:
        UnknownNameError: unknown type (closest match and install hint in the message).
        PluginLoadError: its plugin or factory failed to import.
        UnavailableError: a package it requires is not installed.
    """
    spec = get_host().registry("attention").get(fn_name)
    if spec.missing_requirements():
        return spec.create(d_model=d_model, n_heads=n_heads, dropout=dropout, **kwargs)  # raises
    factory = spec.load()
    call = {"d_model": d_model, "n_heads": n_heads, "dropout": dropout, **kwargs}
    accepted = _accepts(factory)
    if accepted is not None:
        if "n_heads" not in accepted:
            call.pop("n_heads")
        if "dropout" not in accepted:
            if dropout:
                raise CanvasTypeError(
                    f"attention type {fn_name!r} ({spec.factory_path}) takes no dropout argument; "
                    f"create it with dropout=0.0 (got {dropout!r})")
            call.pop("dropout")
        unknown = sorted(set(call) - set(accepted))
        if unknown:
            raise CanvasTypeError(
                f"attention type {fn_name!r} ({spec.factory_path}) does not take "
                f"{', '.join(repr(k) for k in unknown)}; it accepts {sorted(accepted)}")
    return spec.create(**call)  # wraps a non-canvas exception of the factory in a FactoryError


# ---------------------------------------------------------------------- other kinds
register_kernel = _make_register("kernels", "kernel")
unregister_kernel = _make_unregister("kernels", "kernel")
list_kernels = _make_list("kernels", "list_kernels")
create_kernel = _make_create("kernels", "create_kernel")

register_backbone = _make_register("backbones", "backbone")
unregister_backbone = _make_unregister("backbones", "backbone")
list_backbones = _make_list("backbones", "list_backbones")
create_backbone = _make_create("backbones", "create_backbone")

register_identity_binder = _make_register("identity", "identity_binder")
unregister_identity_binder = _make_unregister("identity", "identity_binder")
list_identity_binders = _make_list("identity", "list_identity_binders")
create_identity_binder = _make_create("identity", "create_identity_binder")

register_embedder = _make_register("embedders", "embedder")
unregister_embedder = _make_unregister("embedders", "embedder")
list_embedders = _make_list("embedders", "list_embedders")
create_embedder = _make_create("embedders", "create_embedder")


# ---------------------------------------------------------------------- lookups
def get_registry(kind: str):
    """The default host's registry of ``kind`` (``attention``, ``kernels``, ``backbones``,
    ``identity``, ``embedders``)."""
    return get_host().registry(kind)


def get_spec(kind: str, name: str) -> Spec:
    """The spec ``name`` of registry ``kind`` (errors as ``create_*``)."""
    return get_host().registry(kind).get(name)


def get_attention_spec(name: str) -> Spec:
    return get_spec("attention", name)


def get_kernel_spec(name: str) -> Spec:
    return get_spec("kernels", name)


ATTENTION_REGISTRY = RegistryView("attention")
KERNEL_REGISTRY = RegistryView("kernels")
BACKBONE_REGISTRY = RegistryView("backbones")
IDENTITY_REGISTRY = RegistryView("identity")
EMBEDDER_REGISTRY = RegistryView("embedders")
