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
canvas-engineering's keyword spelling ``register_attention(name, cls=MyAttention)`` is accepted too.

Every function here is written out for each registry kind (attention types, kernels, backbone
adapters, identity binders, embedders); they share the three private helpers below.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Callable, List, Optional, Union

from canvas_core.errors import CanvasTypeError
from canvas_core.plugins.host import get_host
from canvas_core.plugins.registry import Registry, RegistryView
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


def _caller_module() -> Optional[str]:
    """Module name of whoever called the public ``register_*`` function (two frames up)."""
    try:
        return sys._getframe(2).f_globals.get("__name__")
    except Exception:  # pragma: no cover - interpreters without frame access
        return None


#: what a ``register_*`` function accepts as ``name``: a name, a ready Spec, or (bare decorator
#: use) the object being registered.
NameOrObject = Union[str, Spec, Any, None]
#: a factory: a class, a callable, or a lazy ``"package.module:Object"`` string.
Factory = Union[str, Callable[..., Any], None]


def _register(kind: str, name: NameOrObject, factory: Factory, override: bool, module: Optional[str],
              metadata: dict) -> Any:
    """The body shared by every ``register_*`` function (see :func:`register_attention`)."""
    if factory is None and "cls" in metadata:
        factory = metadata.pop("cls")
    if factory is not None:
        return get_host().register(kind, name, factory, override=override, module=module, **metadata)
    if isinstance(name, Spec):
        return get_host().register(kind, name, override=override, module=module)
    if name is not None and not isinstance(name, str):  # ``@register_x`` or ``register_x(Class)``
        obj = name
        get_host().register(kind, _derived_name(obj), obj, override=override, module=module, **metadata)
        return obj

    def decorate(obj: Any) -> Any:
        # the host in force when the decorated object is defined receives it
        get_host().register(kind, name if name is not None else _derived_name(obj), obj,
                            override=override, module=module, **metadata)
        return obj

    return decorate


def _unregister(kind: str, name: str) -> Spec:
    return get_host().unregister(kind, name)


def _names(kind: str) -> List[str]:
    return get_host().registry(kind).names()


def _create(kind: str, name: str, args: tuple, kwargs: dict) -> Any:
    return get_host().registry(kind).get(name).create(*args, **kwargs)


# ---------------------------------------------------------------------- attention types
def register_attention(name: NameOrObject = None, factory: Factory = None, *, override: bool = False,
                       **metadata: Any) -> Any:
    """Register an attention type in the running process.

    Forms: ``register_attention(name, factory, **metadata)`` returns the stored :class:`Spec`;
    ``@register_attention("name", **metadata)`` and bare ``@register_attention`` return the
    decorated object unchanged (the bare form takes the object's ``name`` attribute, else its
    ``__name__`` in snake case).  ``factory`` is a class, a callable, or a lazy
    ``"package.module:Object"`` string; ``cls=`` is accepted in its place.

    Metadata keywords are those of :mod:`canvas_core.plugins.hookspecs` (``family``,
    ``complexity``, ``description``, ``requires``, ``devices``, ``dtypes``, ``check``, ...).
    An existing name raises :class:`~canvas_core.errors.DuplicateRegistrationError` unless
    ``override=True``; the replaced registration returns when the new one is unregistered.
    """
    return _register("attention", name, factory, override, _caller_module(), metadata)


def unregister_attention(name: str) -> Spec:
    """Remove the current registration of attention type ``name`` and return its Spec; a
    registration it had overridden becomes current again."""
    return _unregister("attention", name)


def list_attention_types() -> List[str]:
    """Names of every registered attention type, sorted (installed plugins load on first use)."""
    return _names("attention")


def create_attention(fn_name: str, d_model: int, n_heads: int = 4, dropout: float = 0.0, **kwargs: Any) -> Any:
    """Build attention type ``fn_name``: ``factory(d_model=, n_heads=, dropout=, **kwargs)``.

    The result is an ``nn.Module`` called as ``module(queries, keys, values, key_mask=None)``:
    ``(B, Nq, D), (B, Nk, D), (B, Nk, D) -> (B, Nq, D)``.  Further keywords go to the type
    itself: how many keys ``sparse_attention`` keeps (``top_k``), the width of
    ``local_attention``'s window (``window_size``), a ``kernel=`` choice, and so on.  A factory that takes no ``n_heads`` /
    ``dropout`` parameter is called without them (``dropout`` only when it is 0).  The lookup of
    ``fn_name`` is the only thing done here: building is
    :func:`canvas_core.plugins.resolve.build_attention`.

    Raises:
        UnknownNameError: unknown type (closest match and install hint in the message).
        PluginLoadError: its plugin or factory failed to import.
        UnavailableError: a package it requires is not installed.
    """
    from canvas_core.plugins.resolve import build_attention

    spec = get_host().registry("attention").get(fn_name)
    return build_attention(spec, d_model, n_heads=n_heads, dropout=dropout, **kwargs)


# ---------------------------------------------------------------------- kernels
def register_kernel(name: NameOrObject = None, factory: Factory = None, *, override: bool = False,
                    **metadata: Any) -> Any:
    """Register an attention kernel (a backend that executes attention types); the forms and
    errors are those of :func:`register_attention`.  Kernels also take ``supports`` (the
    attention types they run) and ``priority`` (higher is tried first)."""
    return _register("kernels", name, factory, override, _caller_module(), metadata)


def unregister_kernel(name: str) -> Spec:
    """Remove the current registration of kernel ``name`` and return its Spec."""
    return _unregister("kernels", name)


def list_kernels() -> List[str]:
    """Names of every registered attention kernel, sorted."""
    return _names("kernels")


def create_kernel(name: str, *args: Any, **kwargs: Any) -> Any:
    """Build kernel ``name`` by calling its factory with ``*args, **kwargs``.

    Raises UnknownNameError, PluginLoadError, or UnavailableError when a package it needs is
    missing."""
    return _create("kernels", name, args, kwargs)


# ---------------------------------------------------------------------- backbone adapters
def register_backbone(name: NameOrObject = None, factory: Factory = None, *, override: bool = False,
                      **metadata: Any) -> Any:
    """Register a backbone adapter (used by ``graft_looped_blocks``); the forms and errors are
    those of :func:`register_attention`.  ``model_classes=`` names the model classes it serves."""
    return _register("backbones", name, factory, override, _caller_module(), metadata)


def unregister_backbone(name: str) -> Spec:
    """Remove the current registration of backbone adapter ``name`` and return its Spec."""
    return _unregister("backbones", name)


def list_backbones() -> List[str]:
    """Names of every registered backbone adapter, sorted."""
    return _names("backbones")


def create_backbone(name: str, *args: Any, **kwargs: Any) -> Any:
    """Build backbone adapter ``name`` by calling its factory with ``*args, **kwargs`` (errors
    as :func:`create_kernel`)."""
    return _create("backbones", name, args, kwargs)


# ---------------------------------------------------------------------- identity binders
def register_identity_binder(name: NameOrObject = None, factory: Factory = None, *, override: bool = False,
                             **metadata: Any) -> Any:
    """Register an identity binder (persistent object slots); the forms and errors are those of
    :func:`register_attention`."""
    return _register("identity", name, factory, override, _caller_module(), metadata)


def unregister_identity_binder(name: str) -> Spec:
    """Remove the current registration of identity binder ``name`` and return its Spec."""
    return _unregister("identity", name)


def list_identity_binders() -> List[str]:
    """Names of every registered identity binder, sorted."""
    return _names("identity")


def create_identity_binder(name: str, *args: Any, **kwargs: Any) -> Any:
    """Build identity binder ``name`` by calling its factory with ``*args, **kwargs`` (errors as
    :func:`create_kernel`)."""
    return _create("identity", name, args, kwargs)


# ---------------------------------------------------------------------- embedders
def register_embedder(name: NameOrObject = None, factory: Factory = None, *, override: bool = False,
                      **metadata: Any) -> Any:
    """Register an embedder (text to vectors, used by semantic conditioning); the forms and
    errors are those of :func:`register_attention`."""
    return _register("embedders", name, factory, override, _caller_module(), metadata)


def unregister_embedder(name: str) -> Spec:
    """Remove the current registration of embedder ``name`` and return its Spec."""
    return _unregister("embedders", name)


def list_embedders() -> List[str]:
    """Names of every registered embedder, sorted."""
    return _names("embedders")


def create_embedder(name: str, *args: Any, **kwargs: Any) -> Any:
    """Build embedder ``name`` by calling its factory with ``*args, **kwargs`` (errors as
    :func:`create_kernel`)."""
    return _create("embedders", name, args, kwargs)


# ---------------------------------------------------------------------- lookups
def get_registry(kind: str) -> "Registry":
    """The default host's registry of ``kind`` (``attention``, ``kernels``, ``backbones``,
    ``identity``, ``embedders``)."""
    return get_host().registry(kind)


def get_spec(kind: str, name: str) -> Spec:
    """The spec ``name`` of registry ``kind`` (errors as ``create_*``)."""
    return get_host().registry(kind).get(name)


def get_attention_spec(name: str) -> Spec:
    """The Spec of attention type ``name`` (errors as :func:`create_attention`)."""
    return get_spec("attention", name)


def get_kernel_spec(name: str) -> Spec:
    """The Spec of kernel ``name`` (errors as :func:`create_kernel`)."""
    return get_spec("kernels", name)


ATTENTION_REGISTRY = RegistryView("attention")
KERNEL_REGISTRY = RegistryView("kernels")
BACKBONE_REGISTRY = RegistryView("backbones")
IDENTITY_REGISTRY = RegistryView("identity")
EMBEDDER_REGISTRY = RegistryView("embedders")
