"""canvas-core's plugin layer (pure Python: importing, registering and listing never import torch;
docs/plugins.md is the author's walk-through): hooks (``hookspecs``), the host that loads plugins
(``host``, ``loading``), registries and their entries (``registry``, ``spec``), resolution
(``resolve``).  Defined here, on the default host, from one table (:data:`KIND_API`): per kind
``register_<x>`` (a call returning the Spec, ``cls=`` accepted for the factory; a decorator with a
name; or bare, named ``cls.name`` or ``snake_case(__name__)``), ``unregister_<x>``,
``list_<xs>``, ``create_<x>`` and the read-only mapping ``<KIND>_REGISTRY``; ``ATTENTION_TYPES``."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Any, Dict, Iterator, List

from canvas_core.errors import (
    CanvasTypeError, DuplicateRegistrationError, PluginError, PluginLoadError, UnavailableError, UnknownNameError,
)
from canvas_core.plugins.hookspecs import ENTRY_POINT_GROUP, HOOK_NAMES, hookimpl, hookspec
from canvas_core.plugins.host import PluginHost, get_host, get_plugin_manager, reset_plugins, set_host, use_host
from canvas_core.plugins.loading import ENV_ALLOW, ENV_BLOCK, ENV_DISABLE, PluginRecord
from canvas_core.plugins.registry import KINDS, NOUNS, Registry
from canvas_core.plugins.resolve import ResolvedGroup, build_attention, resolve_attention
from canvas_core.plugins.spec import IN_PROCESS, RuntimeContext, Spec, SpecError

#: kind, function-name stem, plural stem (``list_*``), mapping name, ``register_*`` doc extra.
KIND_API = (
    ("attention", "attention", "attention_types", "ATTENTION_REGISTRY", ""),
    ("kernels", "kernel", "kernels", "KERNEL_REGISTRY",
     " Kernels also take ``supports`` (the attention types they run) and ``priority`` (higher first)."),
    ("backbones", "backbone", "backbones", "BACKBONE_REGISTRY",
     " ``model_classes=`` names the model classes it serves (used by ``graft_looped_blocks``)."),
    ("identity", "identity_binder", "identity_binders", "IDENTITY_REGISTRY", ""),
    ("embedders", "embedder", "embedders", "EMBEDDER_REGISTRY", " (text to vectors)"),
)
__all__ = [
    "hookspec", "hookimpl", "HOOK_NAMES", "ENTRY_POINT_GROUP",
    "PluginHost", "PluginRecord", "get_host", "set_host", "use_host", "reset_plugins",
    "get_plugin_manager", "plugin_report", "registry_report", "ENV_DISABLE", "ENV_ALLOW", "ENV_BLOCK",
    "Spec", "SpecError", "RuntimeContext", "Registry", "RegistryView", "KINDS", "IN_PROCESS",
    "ATTENTION_TYPES", "AttentionTypeInfo", "get_registry", "get_spec", "get_attention_spec", "get_kernel_spec",
    "create_attention", "resolve_attention", "ResolvedGroup",
    "PluginError", "DuplicateRegistrationError", "UnknownNameError", "PluginLoadError", "UnavailableError",
]


def plugin_report() -> List[Dict[str, Any]]:
    """One ``PluginRecord.to_dict`` per plugin of the default host (``canvas plugins --json``)."""
    return get_host().plugin_report()


def registry_report(ctx: Any = None) -> Dict[str, List[Dict[str, Any]]]:
    """Registry kind -> one dict per registered name with its availability in ``ctx``."""
    return get_host().registry_report(ctx)


def snake_case(name: str) -> str:
    """``MyFancyAttention`` -> ``my_fancy_attention``; ``HTTPAttention`` -> ``http_attention``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _derived_name(obj: Any) -> str:
    attr = getattr(obj, "name", None)
    if isinstance(attr, str) and attr:
        return attr
    base = getattr(obj, "__name__", None)
    if not base:
        raise CanvasTypeError(f"cannot derive a registry name from {obj!r}; pass the name explicitly")
    return snake_case(base)


def _register(kind: str, name: Any, factory: Any, override: bool, metadata: dict) -> Any:
    """The body of every ``register_*`` (the caller's module is recorded)."""
    module = sys._getframe(2).f_globals.get("__name__")  # frame 2: the caller of ``register_*``
    if factory is None and "cls" in metadata:
        factory = metadata.pop("cls")
    if factory is not None:
        return get_host().register(kind, name, factory, override=override, module=module, **metadata)

    def decorate(obj: Any) -> Any:  # the host in force when the object is defined receives it
        get_host().register(kind, name if isinstance(name, str) else _derived_name(obj), obj,
                            override=override, module=module, **metadata)
        return obj

    # ``@register_x("name")`` / ``@register_x()`` return the decorator; ``@register_x`` / ``register_x(Class)`` apply it
    return decorate if name is None or isinstance(name, str) else decorate(name)


def _define(name: str, value: Any, doc: str = "") -> None:
    if callable(value):
        value.__name__ = value.__qualname__ = name
        value.__doc__ = doc
    globals()[name] = value
    __all__.append(name)


def _make(kind: str, one: str, many: str, mapping: str, extra: str) -> None:
    noun = NOUNS[kind]
    _define(f"register_{one}", lambda name=None, factory=None, *, override=False, **metadata:
            _register(kind, name, factory, override, metadata), f"Register an {noun} in the running process.{extra} "
            f"``register_{one}(name, factory, **metadata)`` returns the stored Spec; as a decorator it returns the "
            "object.  An existing name needs ``override=True`` (docs/plugins.md lists the metadata keywords).")
    _define(f"unregister_{one}", lambda name: get_host().unregister(kind, name), f"Remove the current "
            f"registration of {noun} ``name``, made in this process by ``register_{one}`` (one it had overridden "
            "comes back); returns its Spec.  A builtin's or an installed plugin's name is refused (PluginError).")
    _define(f"list_{many}", lambda: get_host().registry(kind).names(), f"Names of every registered {noun}, sorted.")
    if kind != "attention":
        _define(f"create_{one}", lambda name, *args, **kwargs: get_host().lookup(kind, name).create(*args, **kwargs),
                f"Build {noun} ``name``: its factory called with ``*args, **kwargs``.")
    _define(mapping, RegistryView(kind))


def create_attention(fn_name: str, d_model: int, n_heads: int = 4, dropout: float = 0.0, **kwargs: Any) -> Any:
    """Build attention type ``fn_name`` (an ``nn.Module`` ``module(queries, keys, values,
    key_mask=None)``); further keywords go to the type (``top_k``, ``window_size``, ``kernel=``, ...).
    Errors as :func:`~canvas_core.plugins.resolve.build_attention`, and UnknownNameError (closest
    match, install hint) for a name nobody provides."""
    spec = get_host().lookup("attention", fn_name)
    return build_attention(spec, d_model, n_heads=n_heads, dropout=dropout, **kwargs)


def get_registry(kind: str) -> Registry:
    """The default host's registry of ``kind`` (a plain container: look names up with :func:`get_spec`)."""
    return get_host().registry(kind)


def get_spec(kind: str, name: str) -> Spec:
    """The spec ``name`` of registry ``kind`` (errors as ``create_*``)."""
    return get_host().lookup(kind, name)


def get_attention_spec(name: str) -> Spec:
    return get_spec("attention", name)


def get_kernel_spec(name: str) -> Spec:
    return get_spec("kernels", name)


class RegistryView(Mapping):
    """Read-only, live ``name -> Spec`` mapping over one registry of the default host."""

    _wrap = staticmethod(lambda spec: spec)

    def __init__(self, kind: str) -> None:
        self._kind = kind

    def __getitem__(self, name: str) -> Any:
        return self._wrap(get_host().lookup(self._kind, name))

    def get(self, name: str, default: Any = None) -> Any:
        reg = get_registry(self._kind)
        return self._wrap(reg.get(name)) if name in reg else default

    def __contains__(self, name: object) -> bool:
        return name in get_registry(self._kind)

    def __iter__(self) -> Iterator[str]:
        return iter(get_registry(self._kind).names())

    def __len__(self) -> int:
        return len(get_registry(self._kind))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._kind!r}: {list(self)})"


class AttentionTypeInfo(str):
    """An entry of ``ATTENTION_TYPES``: the description string (canvas-engineering's value), with
    ``name``, ``family``, ``complexity``, ``description``, ``provider`` and ``spec`` attributes."""

    def __new__(cls, spec: Spec) -> "AttentionTypeInfo":
        obj = super().__new__(cls, spec.description or "")
        obj.name, obj.family, obj.complexity = spec.name, spec.family, spec.complexity
        obj.description, obj.provider, obj.spec = spec.description or "", spec.provider, spec
        return obj

    def __reduce__(self):  # pickles as the plain description string
        return (str, (str(self),))


class AttentionTypesView(RegistryView):
    _wrap = AttentionTypeInfo

    def __repr__(self) -> str:
        return "ATTENTION_TYPES(" + repr({k: str(v) for k, v in self.items()}) + ")"


for _row in KIND_API:
    _make(*_row)
ATTENTION_TYPES = AttentionTypesView("attention")
