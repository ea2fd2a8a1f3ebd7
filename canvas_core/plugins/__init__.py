"""canvas-core's plugin layer (pure Python: importing, registering and listing never import torch;
docs/plugins.md is the author's walk-through): hooks (``hookspecs``), the host that loads plugins
(``host``, ``loading``), registries and their entries (``registry``, ``spec``), resolution
(``resolve``).  Defined here, on the default host, from one table (:data:`KIND_API`): per kind
``register_<x>`` (a call returning the Spec, ``cls=`` accepted for the factory; a decorator with a
name; or bare, named ``cls.name`` or ``snake_case(__name__)``), ``unregister_<x>``,
``list_<xs>``, ``create_<x>`` and the live mapping ``<KIND>_REGISTRY`` (read-only, except
``ATTENTION_REGISTRY``, which also takes canvas-engineering's ``ATTENTION_REGISTRY[name] = cls``);
``ATTENTION_TYPES``."""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Dict, Iterator, List

from canvas_core.errors import (
    CanvasTypeError, DuplicateRegistrationError, PluginError, PluginLoadError, UnavailableError, UnknownNameError,
)
from canvas_core.plugins.hookspecs import ENTRY_POINT_GROUP, HOOK_NAMES, hookimpl, hookspec
from canvas_core.plugins.host import PluginHost, get_host, get_plugin_manager, reset_plugins, set_host, use_host
from canvas_core.plugins.loading import ENV_ALLOW, ENV_BLOCK, ENV_DISABLE, PluginRecord
from canvas_core.plugins.registry import KINDS, NOUNS, Registry
from canvas_core.plugins.resolve import ResolvedGroup, build_attention, resolve_attention
from canvas_core.plugins.spec import IN_PROCESS, SPEC_FIELDS, RuntimeContext, Spec, SpecError, parse_factory_path

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
    "ATTENTION_TYPES", "AttentionTypeInfo", "AttentionEntry", "get_registry", "get_spec", "get_attention_spec", "get_kernel_spec",
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
    _define(mapping, AttentionRegistryView(kind) if kind == "attention" else RegistryView(kind))


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
        try:  # one read of the registry: a name removed meanwhile gives the default, not a KeyError
            return self._wrap(get_registry(self._kind).get(name))
        except UnknownNameError:
            return default

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


_VIEW_MODULES = (__name__, "collections.abc", "_collections_abc")


def _caller_module() -> Any:
    """The module of the code that assigned into a view (``update`` and friends skipped)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") in _VIEW_MODULES:
        frame = frame.f_back
    return frame.f_globals.get("__name__") if frame is not None else None


class AttentionEntry:
    """An ``ATTENTION_REGISTRY`` value: the registry's :class:`Spec` (every attribute and method of
    it: ``factory``, ``name``, ``family``, ``create``, ... and ``spec`` for the Spec itself), which
    also stands in for the class canvas-engineering's dict held there.  Calling it builds the type
    with the arguments given (``entry(d_model, n_heads, dropout)``, as ``cls(...)``); it has the
    factory's ``__name__``, ``__qualname__``, ``__module__`` (a lazy factory's module read off its
    path, nothing imported), ``__doc__`` and ``__signature__``; ``issubclass(entry, nn.Module)``,
    ``isinstance(module, entry)`` and ``class Mine(entry)`` see the factory class.  It is not the
    class object itself: compare ``entry.factory`` with a class rather than ``entry is cls``."""

    __slots__ = ("spec",)

    def __init__(self, spec: Spec) -> None:
        object.__setattr__(self, "spec", spec)

    def __getattribute__(self, attr: str) -> Any:
        # ``__module__`` and ``__doc__`` are class attributes of every class, so ``__getattr__``
        # never sees them: without this an entry would report this module and this docstring
        if attr == "__module__":
            return _factory_module(object.__getattribute__(self, "spec"))
        if attr == "__doc__":
            return _factory_doc(object.__getattribute__(self, "spec"))
        return object.__getattribute__(self, attr)

    def __getattr__(self, attr: str) -> Any:
        if attr == "__qualname__":
            return getattr(self.spec.load(), "__qualname__", self.__name__)
        if attr == "spec" or attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self.spec, attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(self.spec, attr, value)

    def __dir__(self) -> List[str]:
        return sorted(set(object.__dir__(self)) | set(dir(self.spec)))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.spec.create(*args, **kwargs)

    @property
    def __name__(self) -> str:  # type: ignore[override]
        f = self.spec.factory
        if isinstance(f, str):  # a lazy factory is named without importing it
            return parse_factory_path(f)[1].rpartition(".")[2] or f
        return getattr(f, "__name__", type(f).__name__)

    @property
    def __bases__(self) -> tuple:  # what issubclass(entry, X) walks
        f = self.spec.load()
        return (f,) if isinstance(f, type) else ()

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.spec.load())

    def __mro_entries__(self, bases: tuple) -> tuple:  # ``class Mine(ATTENTION_REGISTRY[name])``
        return (self.spec.load(),)

    def __instancecheck__(self, obj: Any) -> bool:
        f = self.spec.load()
        return isinstance(f, type) and isinstance(obj, f)

    def __subclasscheck__(self, cls: Any) -> bool:
        f = self.spec.load()
        return isinstance(f, type) and issubclass(cls, f)

    def __eq__(self, other: Any) -> bool:
        return self.spec is (other.spec if isinstance(other, AttentionEntry) else other)

    def __hash__(self) -> int:
        return hash(self.spec)

    def __repr__(self) -> str:
        return repr(self.spec)

    def __reduce__(self):
        return (AttentionEntry, (self.spec,))


def _factory_module(spec: Spec) -> Any:
    """The module canvas-engineering's class would report: the factory's, or a lazy path's module."""
    f = spec.factory
    return parse_factory_path(f)[0] if isinstance(f, str) else getattr(f, "__module__", None)


def _factory_doc(spec: Spec) -> Any:
    """The factory's docstring (importing a lazy one); the spec's description if it cannot load."""
    try:
        return getattr(spec.load(), "__doc__", None)
    except PluginLoadError:
        return spec.description or None


def _entry_metadata(spec: Spec) -> Dict[str, Any]:
    """The keywords that re-register ``spec``'s type under another name."""
    keep = [k for k in SPEC_FIELDS if k not in ("priority", "supports")]
    return {**{k: getattr(spec, k) for k in keep}, **spec.metadata}


def _positional_problem(value: Any) -> str:
    """Why ``value(d_model, n_heads, dropout)`` cannot be called, or "" (also when unknowable)."""
    try:
        inspect.signature(value).bind(0, 0, 0.0)
    except TypeError as exc:
        return str(exc)
    except ValueError:  # no readable signature (a builtin): trust it
        pass
    return ""


class AttentionRegistryView(RegistryView, MutableMapping):
    """``ATTENTION_REGISTRY``: live ``name -> AttentionEntry`` (a :class:`Spec` usable as the class),
    which also takes canvas-engineering's dict writes.  ``view[name] = cls`` registers ``cls`` as
    :func:`register_attention` does (same checks and errors: an existing name is a
    ``DuplicateRegistrationError``) when ``cls(d_model, n_heads, dropout)`` can be called, as in
    canvas-engineering; ``view[name] = view[other]`` registers the same type under a second name;
    ``del view[name]`` is :func:`unregister_attention`."""

    _wrap = AttentionEntry

    def __setitem__(self, name: str, value: Any) -> None:
        metadata: Dict[str, Any] = {}
        if isinstance(value, (AttentionEntry, Spec)):
            spec = value.spec if isinstance(value, AttentionEntry) else value
            value, metadata = spec.factory, _entry_metadata(spec)
        elif isinstance(value, str) or not callable(value):
            raise CanvasTypeError(
                f"ATTENTION_REGISTRY[{name!r}] = {value!r}: the value must be an attention class (or a "
                "callable) built as cls(d_model, n_heads, dropout); register a lazy 'package.module:Object' "
                f"path with register_attention({name!r}, path)")
        elif problem := _positional_problem(value):
            raise CanvasTypeError(
                f"ATTENTION_REGISTRY[{name!r}] = {value!r}: canvas-engineering builds the classes in "
                f"this mapping as cls(d_model, n_heads, dropout), which {value!r} does not take "
                f"({problem}); accept those three arguments, or use register_attention({name!r}, factory), "
                "which passes d_model=, n_heads=, dropout= by keyword and leaves out those it does not take")
        get_host().register(self._kind, name, value, module=_caller_module(), **metadata)

    def __delitem__(self, name: str) -> None:
        get_host().unregister(self._kind, name)

    def popitem(self) -> Any:
        raise PluginError("ATTENTION_REGISTRY.popitem() would unregister an arbitrary type; use "
                          "del ATTENTION_REGISTRY[name] (unregister_attention) for a name you registered")

    def clear(self) -> None:
        raise PluginError("ATTENTION_REGISTRY.clear(): builtin and plugin types cannot be removed; "
                          "unregister your own names one by one, or call reset_plugins()")


class AttentionTypesView(RegistryView, MutableMapping):
    """``ATTENTION_TYPES``: live ``name -> AttentionTypeInfo`` (the description string), one per
    registered attention type.  ``view[name] = "text"`` sets the description of registered type
    ``name`` (canvas-engineering's way to describe a type it registered); the catalogue holds
    every registered type, so a name that is not registered is refused (an ``UnknownNameError``,
    also a ``KeyError``) and ``del view[name]`` is refused (remove the type itself with
    ``del ATTENTION_REGISTRY[name]``)."""

    _wrap = AttentionTypeInfo

    def __setitem__(self, name: str, description: Any) -> None:
        if not isinstance(description, str):
            raise CanvasTypeError(f"ATTENTION_TYPES[{name!r}] = {description!r}: a description must be a "
                                  f"string, got {type(description).__name__}")
        if name not in get_registry(self._kind):
            err = get_host().missing_name_error(self._kind, name)
            err.args = (f"ATTENTION_TYPES[{name!r}] = ... describes a registered attention type: register "
                        f"it first (ATTENTION_REGISTRY[{name!r}] = cls, or register_attention({name!r}, cls, "
                        f"description=...)). {err}",)
            raise err
        get_host().lookup(self._kind, name).description = description

    def __delitem__(self, name: str) -> None:
        self[name]  # an unknown name is a KeyError, as for a dict
        raise CanvasTypeError(
            f"del ATTENTION_TYPES[{name!r}]: the catalogue lists every registered attention type; remove "
            f"the type itself with del ATTENTION_REGISTRY[{name!r}] (unregister_attention), or describe it "
            f"differently with ATTENTION_TYPES[{name!r}] = 'text'")

    def __repr__(self) -> str:
        return "ATTENTION_TYPES(" + repr({k: str(v) for k, v in self.items()}) + ")"


for _row in KIND_API:
    _make(*_row)
ATTENTION_TYPES = AttentionTypesView("attention")
