"""Registry entries (:class:`Spec`): a name, a lazy factory (``"package.module:Object"`` or an
object) and what it needs to run, judged against a :class:`RuntimeContext` without importing torch."""

from __future__ import annotations

import importlib.machinery
import pkgutil
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from canvas_core.devices import RuntimeContext, check_device, check_dtype, cuda_status
from canvas_core.errors import (  # noqa: F401 - the factory errors and SpecError are also reachable here
    CanvasError, CanvasTypeError, FactoryError, FactoryTypeError, FactoryValueError, PluginLoadError, SpecError,
    UnavailableError,
)
from canvas_core.plugins.hints import exc_text, pip_name

#: distribution name recorded for names registered in-process (``register_attention(...)``).
IN_PROCESS = "<in-process>"
#: registry kind -> human noun of one entry (error messages), in the order their hooks run.
NOUNS: Dict[str, str] = {"attention": "attention type", "kernels": "attention kernel",
                         "backbones": "backbone adapter", "identity": "identity binder", "embedders": "embedder"}
#: registry kind -> the stem of its ``register_*`` / ``unregister_*`` functions (error messages)
API_STEMS: Dict[str, str] = {"attention": "attention", "kernels": "kernel", "backbones": "backbone",
                             "identity": "identity_binder", "embedders": "embedder"}

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_DOTTED_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def parse_factory_path(path: str) -> Tuple[str, str]:
    """``"pkg.mod:Obj.attr"`` -> ``("pkg.mod", "Obj.attr")``; ``"pkg.mod.Obj"`` -> ``("pkg.mod", "Obj")``."""
    if ":" in path:
        module, _, attr = path.partition(":")
        ok = _DOTTED_RE.match(module) and (not attr or _DOTTED_RE.match(attr))
    else:
        module, _, attr = path.rpartition(".")
        ok = _DOTTED_RE.match(path) and module
    if not ok:
        raise SpecError(f"malformed factory path {path!r}; expected 'package.module:Object'")
    return module, attr


def _as_tuple(value: Any, what: str, name: str) -> Optional[Tuple[str, ...]]:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    try:
        out = tuple(value)
    except TypeError:
        raise CanvasTypeError(f"{name!r}: {what} must be a string or a sequence of strings, got {value!r}") from None
    torchy = what in ("devices", "dtypes")  # torch.device / torch.dtype objects are accepted too
    for v in out:
        if not ((isinstance(v, str) and v.strip())
                or (torchy and (getattr(v, "type", None) is not None or type(v).__name__ == "dtype"))):
            raise CanvasTypeError(
                f"{name!r}: every entry of {what} must be a non-empty string, got {v!r} in {value!r}")
    return out


def _unfound(module: str) -> Optional[str]:
    """The first level of dotted ``module`` that cannot be found, or None, found without importing
    anything: each level is asked of the ``sys.meta_path`` finders, as ``find_spec`` does, with the
    parent's search path.  A finder that cannot tell counts as found."""
    if module in sys.modules:  # imported already (also a module that is no package's child: os.path)
        return None
    parts, path = module.split("."), None
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        loaded = sys.modules.get(name)
        try:
            if loaded is not None:
                found = loaded.__spec__ or importlib.machinery.ModuleSpec(name, None, is_package=True)
            else:
                found = next((f for f in (getattr(m, "find_spec", lambda *a: None)(name, path)
                                          for m in sys.meta_path) if f is not None), None)
        except (ImportError, ValueError):
            return None
        if found is None:
            return name
        if i < len(parts) - 1 and found.submodule_search_locations is None:  # a plain module has no children
            return ".".join(parts[: i + 2])
        path = found.submodule_search_locations
    return None


#: keyword metadata stored as Spec attributes (everything else goes to ``spec.metadata``).
SPEC_FIELDS = ("family", "complexity", "description", "requires", "devices", "dtypes", "check",
               "priority", "supports")


@dataclass(eq=False)
class Spec:
    """One registry entry: ``name`` -> ``factory`` (a class, a callable or a lazy
    ``"package.module:Object"`` string), who provides it (``distribution``, ``version``,
    ``plugin``; ``module``: the caller of an in-process ``register_*``), and the metadata keywords
    of docs/plugins.md (other keywords land in ``metadata``)."""

    name: str
    factory: Any
    kind: str = "attention"
    distribution: str = IN_PROCESS
    version: str = ""
    plugin: str = IN_PROCESS
    module: Optional[str] = None
    family: Optional[str] = None
    complexity: Optional[str] = None
    description: str = ""
    requires: Tuple[str, ...] = ()
    devices: Optional[Tuple[str, ...]] = None
    dtypes: Optional[Tuple[str, ...]] = None
    check: Optional[Callable[[RuntimeContext], Any]] = None
    priority: int = 0
    supports: Tuple[str, ...] = ()
    metadata: Dict[str, Any] = field(default_factory=dict)
    _loaded: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            stem = API_STEMS.get(self.kind, self.kind).replace("_", " ")  # the name register_<stem> was given
            raise SpecError(
                f"invalid {stem} name {self.name!r}: use letters, digits, '_', '-' or '.', "
                "starting with a letter or '_'")
        if isinstance(self.factory, str):
            parse_factory_path(self.factory)  # validates the format, imports nothing
        elif not callable(self.factory):
            raise CanvasTypeError(
                f"{self.noun} {self.name!r}: factory must be a class, a callable or a "
                f"'package.module:Object' string, got {type(self.factory).__name__} {self.factory!r}")
        where = f"{self.noun} {self.name!r}"
        self.requires = _as_tuple(self.requires, "requires", self.name) or ()
        for key, check in (("devices", check_device), ("dtypes", check_dtype)):  # names torch knows, normalised
            given = _as_tuple(getattr(self, key), key, self.name)
            setattr(self, key, None if given is None else tuple(check(v, f"{where} {key}") for v in given))
        for key in ("family", "complexity"):
            v = getattr(self, key)
            if v is not None and not isinstance(v, str):
                raise CanvasTypeError(f"{where}: {key} must be a string or None, got {v!r}")
        self.supports = _as_tuple(self.supports, "supports", self.name) or ()
        if self.check is not None and not callable(self.check):
            raise CanvasTypeError(f"{where}: check must be callable(ctx) -> list[str]")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise CanvasTypeError(f"{where}: priority must be an int, got {self.priority!r}")
        self.description = "" if self.description is None else str(self.description)

    @property
    def noun(self) -> str:
        """What one entry of this kind is called in messages, singular (``"embedder"``, not the
        registry kind ``"embedders"``); the kind itself for a kind no registry has."""
        return NOUNS.get(self.kind, self.kind)

    @property
    def provider(self) -> str:
        """Who provides it: the distribution, or ``"<in-process> (module)"``."""
        if self.distribution == IN_PROCESS and self.module:
            return f"{IN_PROCESS} ({self.module})"
        return self.distribution

    @property
    def factory_path(self) -> str:
        f = self.factory
        if isinstance(f, str):
            return f
        mod = getattr(f, "__module__", None)
        qual = getattr(f, "__qualname__", None) or type(f).__qualname__
        return f"{mod}:{qual}" if mod else str(qual)

    def describe_provider(self) -> str:
        """``"canvas-plugin-x 1.0 (plugin 'x')"``."""
        ver = f" {self.version}" if self.version else ""
        plug = f" (plugin {self.plugin!r})" if self.plugin not in (self.distribution, IN_PROCESS) else ""
        return f"{self.provider}{ver}{plug}"

    def missing_requirements(self) -> List[str]:
        """Modules in ``requires`` that cannot be found (nothing is imported)."""
        return [str(r) for r in self.requires if _unfound(str(r))]

    def factory_problem(self) -> Optional[str]:
        """Why a lazy factory string's module cannot be imported (found without importing); None
        when found.  The object after ``:`` is not checked (that needs the import)."""
        missing = _unfound(parse_factory_path(self.factory)[0]) if isinstance(self.factory, str) else None
        return missing and f"its factory module {missing!r} cannot be found (factory {self.factory!r}; a typo?)"

    def unsupported_reasons(self, ctx: Any = None) -> List[str]:
        """Why this cannot run in ``ctx`` (empty: it can): required modules, device (and CUDA really
        present, unless ``ctx.preview``), dtype, differentiability, the custom ``check``."""
        ctx = RuntimeContext.coerce(ctx)
        reasons = [f"requires the Python package {m!r}, which is not installed" for m in self.missing_requirements()]
        dev = ctx.device_type
        if self.devices is not None:
            if dev not in self.devices:
                reasons.append(f"runs on {', '.join(self.devices)} only, not on {dev}")
            elif dev == "cuda" and cuda_status() is False and not ctx.preview:
                reasons.append("needs CUDA but torch reports no CUDA device" if "torch" in sys.modules
                               else "needs CUDA but torch is not installed")
        if self.dtypes is not None and ctx.dtype_name not in self.dtypes:
            reasons.append(f"supports dtypes {', '.join(self.dtypes)}, not {ctx.dtype_name}")
        if ctx.requires_grad and self.metadata.get("differentiable") is False:
            reasons.append("has no backward pass (not differentiable) but gradients are required")
        if self.check is not None:
            try:
                extra = self.check(ctx)
            except Exception as exc:  # a broken check is a reason, not a crash
                extra = [f"its availability check raised {exc_text(exc)}"]
            reasons.extend(str(r) for r in ([extra] if isinstance(extra, str) else extra or []))
        return reasons

    def load(self) -> Any:
        """The factory object (imported on first call, then cached); :class:`PluginLoadError`
        naming the spec, the path and the provider when it cannot be imported."""
        f = self.factory
        if self._loaded is None and not isinstance(f, str):
            self._loaded = f
        if self._loaded is not None:
            return self._loaded
        path = ":".join(parse_factory_path(f))  # "pkg.mod.Obj" is read as "pkg.mod:Obj"
        try:
            obj = pkgutil.resolve_name(path)  # imports the module, then follows the attributes
        except Exception as exc:
            missing = self.missing_requirements()
            hint = (f" It needs {', '.join(repr(m) for m in missing)}: install it." if missing else
                    f" Reinstall or fix {self.distribution}, or block it with CANVAS_BLOCK_PLUGINS.")
            raise PluginLoadError(
                f"{self.noun} {self.name!r} (factory {f!r}, from {self.describe_provider()}) failed to "
                f"load: {exc_text(exc)}.{hint}") from exc
        if not callable(obj):
            raise PluginLoadError(
                f"{self.noun} {self.name!r}: factory {f!r} from {self.describe_provider()} is not "
                f"callable ({type(obj).__name__})")
        self._loaded = obj
        return obj

    def create(self, *args: Any, **kwargs: Any) -> Any:
        """``load()(*args, **kwargs)``; refuses with :class:`UnavailableError` when a required
        package is missing (before trying to import it)."""
        if missing := self.missing_requirements():
            raise UnavailableError(
                f"{self.noun} {self.name!r} from {self.describe_provider()} needs the Python "
                f"package(s) {', '.join(repr(m) for m in missing)}, which are not installed. "
                f"Install them (e.g. pip install {' '.join(pip_name(m) for m in missing)}).")
        factory = self.load()
        try:
            return factory(*args, **kwargs)
        except Exception as exc:
            if isinstance(exc, CanvasError):
                raise
            cls = (FactoryTypeError if isinstance(exc, TypeError) else
                   FactoryValueError if isinstance(exc, ValueError) else FactoryError)
            given = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
            raise cls(
                f"{self.noun} {self.name!r} from {self.describe_provider()} could not be built with "
                f"({given}): its factory {self.factory_path!r} raised {exc_text(exc)}. "
                "Check these arguments against its documentation, or report it to the plugin's "
                "author") from exc

    def to_dict(self, ctx: Any = None) -> Dict[str, Any]:
        """JSON-able description with the availability in ``ctx``."""
        d: Dict[str, Any] = {"name": self.name, "kind": self.kind, "factory": self.factory_path}
        for key in ("distribution", "version", "plugin", "provider", "family", "complexity", "description",
                    "requires", "devices", "dtypes", "priority") + (("supports",) if self.kind == "kernels" else ()):
            value = getattr(self, key)
            d[key] = list(value) if isinstance(value, tuple) else value
        if extra := {k: v for k, v in self.metadata.items() if _jsonable(v)}:
            d["metadata"] = extra
        reasons = self.unsupported_reasons(ctx)
        return dict(d, available=not reasons, reasons=reasons)

    def __repr__(self) -> str:
        return (f"Spec(kind={self.kind!r}, name={self.name!r}, factory={self.factory_path!r}, "
                f"provider={self.describe_provider()!r})")


def _jsonable(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return all(map(_jsonable, v))
    if isinstance(v, dict):
        return all(isinstance(k, str) and _jsonable(x) for k, x in v.items())
    return v is None or isinstance(v, (str, int, float, bool))
