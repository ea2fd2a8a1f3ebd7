"""The plugin host: one pluggy manager, the registries it fills, and a record of every plugin.

A :class:`PluginHost` owns everything the plugin layer knows, so tests can build a fresh one
(``with use_host(PluginHost(...)):``) instead of mutating globals.  The module-level API
(``register_attention``, ``create_attention``, ...) works on a default host created on first use.

Loading is lazy: the first registry access registers the builtin plugin, discovers entry points in
group ``canvas`` (``importlib.metadata``), imports the allowed ones and calls each plugin's hooks
*one plugin at a time* with a registry proxy that stamps the plugin's distribution and version on
everything it adds.  A plugin whose import or hook raises is recorded (status ``failed`` with the
error) and the others keep working.  Environment (read at load time):

* ``CANVAS_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry point (builtins still registered);
* ``CANVAS_PLUGINS=a,b``: load only these (entry-point or distribution names);
* ``CANVAS_BLOCK_PLUGINS=x,y``: never load these.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional

import pluggy

from canvas_core.errors import DuplicateRegistrationError, PluginError, PluginLoadError
from canvas_core.plugins import hookspecs
from canvas_core.plugins.hints import install_hint, normalize_dist, provider_hint
from canvas_core.plugins.registry import KINDS, NOUNS, Registry, UnknownNameKeyError, closest
from canvas_core.plugins.spec import IN_PROCESS, RuntimeContext, Spec

__all__ = [
    "PluginHost",
    "PluginRecord",
    "get_host",
    "set_host",
    "use_host",
    "reset_plugins",
    "get_plugin_manager",
    "ENV_DISABLE",
    "ENV_ALLOW",
    "ENV_BLOCK",
    "BUILTIN_PLUGIN",
]

ENV_DISABLE = "CANVAS_DISABLE_PLUGIN_AUTOLOAD"
ENV_ALLOW = "CANVAS_PLUGINS"
ENV_BLOCK = "CANVAS_BLOCK_PLUGINS"
#: plugin name of the core's own registrations.
BUILTIN_PLUGIN = "builtin"

STATUS_OK, STATUS_FAILED, STATUS_BLOCKED, STATUS_DISABLED = "ok", "failed", "blocked", "disabled"


def _truthy(value: Optional[str]) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


_FALSY = ("", "0", "false", "no", "off")


def _env_flag(env: Mapping[str, str], var: str) -> bool:
    """A boolean environment variable; :class:`PluginError` for a value that is neither."""
    raw = env.get(var)
    if _truthy(raw):
        return True
    if str(raw or "").strip().lower() in _FALSY:
        return False
    raise PluginError(
        f"environment variable {var}={raw!r} is not a boolean; set it to 1 (or true/yes/on) to enable "
        "it, or 0 / unset it to disable it")


def _name_list(value: Any) -> Optional[List[str]]:
    """``"a, b;c"`` / ``["a", "b"]`` -> normalised names; None / "" -> None."""
    if value is None:
        return None
    if isinstance(value, str):
        items = value.replace(";", ",").split(",")
    else:
        items = list(value)
    names = [normalize_dist(x.strip()) for x in items if str(x).strip()]
    return names or None


def _core_version() -> str:
    try:
        from importlib.metadata import version

        return version("canvas-core")
    except Exception:
        import canvas_core

        return getattr(canvas_core, "__version__", "")


@dataclass
class PluginRecord:
    """What the host knows about one plugin (a row of ``canvas plugins``)."""

    name: str
    distribution: str
    version: str = ""
    source: str = "entry-point"  # builtin | entry-point | manual | in-process
    entry_point: Optional[str] = None
    status: str = STATUS_OK
    error: Optional[str] = None
    traceback: Optional[str] = None
    hooks: List[str] = field(default_factory=list)
    conflicts: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    plugin: Any = field(default=None, repr=False)
    #: kind -> names the plugin tried to register (kept when it failed, to explain lookups)
    attempted: Dict[str, List[str]] = field(default_factory=dict, repr=False)

    def describe(self) -> str:
        ver = f" {self.version}" if self.version else ""
        return f"plugin {self.name!r} ({self.distribution}{ver})"

    def to_dict(self, registered: Optional[Dict[str, List[str]]] = None) -> Dict[str, Any]:
        return {
            "name": self.name, "distribution": self.distribution, "version": self.version,
            "source": self.source, "entry_point": self.entry_point, "status": self.status,
            "error": self.error, "traceback": self.traceback, "hooks": list(self.hooks),
            "registered": registered or {}, "conflicts": list(self.conflicts),
            "warnings": list(self.warnings),
            # a failed plugin keeps nothing: what it had registered before failing
            "discarded": ({k: sorted(set(v)) for k, v in self.attempted.items()}
                          if self.status == STATUS_FAILED else {}),
        }


class _CanvasPluginManager(pluggy.PluginManager):
    """pluggy manager that also accepts *unmarked* functions named exactly like a canvas hook
    (so a plugin module works even when it could not import the ``hookimpl`` marker)."""

    def parse_hookimpl_opts(self, plugin: Any, name: str):  # type: ignore[override]
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name in hookspecs.HOOK_REGISTRY:
            method = getattr(plugin, name, None)
            if inspect.isroutine(method):
                opts = {"wrapper": False, "hookwrapper": False, "optionalhook": False,
                        "tryfirst": False, "trylast": False, "specname": None}
        return opts


class _PluginRegistry:
    """The registry a plugin's hook receives: ``add`` stamps the plugin's distribution and
    version, and a name clash is recorded as a conflict instead of aborting the plugin."""

    def __init__(self, registry: Registry, record: PluginRecord, strict: bool) -> None:
        self._registry = registry
        self._record = record
        self._strict = strict
        self.kind = registry.kind
        self.noun = registry.noun

    def add(self, name: Any, factory: Any = None, *, override: bool = False, **metadata: Any) -> Optional[Spec]:
        return self.add_spec(self.make(name, factory, metadata), override=override)

    def make(self, name: Any, factory: Any, metadata: Dict[str, Any], module: Optional[str] = None) -> Spec:
        rec = self._record
        return self._registry.make_spec(name, factory, metadata, distribution=rec.distribution,
                                        version=rec.version, plugin=rec.name, module=module)

    def add_spec(self, spec: Spec, *, override: bool = False) -> Optional[Spec]:
        """Insert ``spec`` for this plugin.  Between installed plugins the outcome does not depend
        on their load order: a registration made with ``override=True`` wins over plain ones
        whichever loads first; two plain ones (or two overriding ones) are a conflict."""
        rec, reg = self._record, self._registry
        rec.attempted.setdefault(reg.kind, []).append(spec.name)
        stack = reg._stacks.get(spec.name)
        if stack and not self._strict:
            top = stack[-1]
            has_builtin = any(s.plugin == BUILTIN_PLUGIN for s in stack)
            top_overrides = (getattr(top, "_canvas_override", False) and top.plugin != rec.name
                             and top.plugin not in (BUILTIN_PLUGIN, IN_PROCESS))
            if top_overrides and override:
                exc = DuplicateRegistrationError(
                    f"{reg.noun} {spec.name!r} is replaced with override=True by two plugins: "
                    f"{top.describe_provider()} and {spec.describe_provider()}; neither is chosen. "
                    "Uninstall or block one of the two (CANVAS_BLOCK_PLUGINS=<plugin or distribution>).")
                rec.conflicts.append(str(exc))
                reg._record_conflict(spec.name, exc, rec.name)
                return None
            if top_overrides and not has_builtin:
                # an earlier plugin replaces this name on purpose: it stays on top, this one below
                stack.insert(len(stack) - 1, spec)
                return spec
        try:
            spec = reg._insert(spec, override=override)
        except DuplicateRegistrationError as exc:
            if self._strict:
                raise
            rec.conflicts.append(str(exc))
            if not any(s.plugin == BUILTIN_PLUGIN for s in reg._stacks[spec.name]):
                # two installed plugins: ambiguous, so using the name raises (no silent pick)
                reg._record_conflict(spec.name, exc, rec.name)
            # a clash with a builtin leaves the builtin in place (override=True replaces it)
            return None
        if override:
            spec._canvas_override = True  # type: ignore[attr-defined]
        return spec

    # read access for plugins that look at what is already there
    def __contains__(self, name: object) -> bool:
        return name in self._registry

    def names(self) -> List[str]:
        return self._registry.names()

    def get(self, name: str, default: Any = None) -> Any:
        return self._registry.get(name, default)


class PluginHost:
    """Plugin manager + registries + plugin records.

    Args:
        autoload: load entry points (None: ``not $CANVAS_DISABLE_PLUGIN_AUTOLOAD``).
        allow: allow-list of entry-point / distribution names (None: ``$CANVAS_PLUGINS``).
        block: block-list (None: ``$CANVAS_BLOCK_PLUGINS``).
        builtins: register the core's builtin types.
        entry_points: callable returning the entry points to consider (default: group
            ``canvas`` from ``importlib.metadata``); lets tests inject fakes.
        environ: mapping read for the environment controls (default ``os.environ`` at load time).
    """

    def __init__(self, *, autoload: Optional[bool] = None, allow: Optional[Iterable[str]] = None,
                 block: Optional[Iterable[str]] = None, builtins: bool = True,
                 entry_points: Optional[Callable[[], Iterable[Any]]] = None,
                 environ: Optional[Mapping[str, str]] = None) -> None:
        self._autoload_arg = autoload
        self._allow_arg = allow
        self._block_arg = block
        self._builtins = builtins
        self._entry_points = entry_points
        self._environ = environ
        self._lock = threading.RLock()
        self._reset_state()

    def _reset_state(self) -> None:
        self._pm = _CanvasPluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self.registries: Dict[str, Registry] = {k: Registry(k, self) for k in KINDS}
        self.records: Dict[str, PluginRecord] = {}
        self.settings: Dict[str, Any] = {}
        self._loaded = False
        self._loading_thread: Optional[int] = None
        # the installed plugin being imported / run (in-process registrations are attributed to it)
        self._loading_record: Optional[PluginRecord] = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def loaded(self) -> bool:
        return self._loaded

    def ensure_loaded(self) -> None:
        """Load builtins and entry-point plugins once (no-op afterwards, and while loading)."""
        if self._loaded or self._loading_thread == threading.get_ident():
            return  # loaded, or a hook of the loading thread reads a registry
        with self._lock:  # another thread loading: wait for it
            if self._loaded:
                return
            self._read_settings()  # a bad environment variable raises here and leaves it unloaded
            self._loading_thread = threading.get_ident()
            try:
                self._load()
            finally:
                self._loading_thread = None
                self._loaded = True

    def reset(self) -> None:
        """Forget everything (plugins, registrations, in-process ones too); the next access loads
        again, re-reading the environment and the installed entry points."""
        with self._lock:
            self._reset_state()

    def reload(self) -> None:
        """:meth:`reset`, then load now."""
        self.reset()
        self.ensure_loaded()

    @property
    def plugin_manager(self) -> pluggy.PluginManager:
        """The (loaded) pluggy ``PluginManager("canvas")``."""
        self.ensure_loaded()
        return self._pm

    def registry(self, kind: str) -> Registry:
        """The registry of ``kind`` (one of :data:`KINDS`), plugins loaded."""
        if kind not in self.registries:
            raise PluginError(f"unknown registry kind {kind!r}; expected one of {', '.join(KINDS)}")
        self.ensure_loaded()
        return self.registries[kind]

    # ------------------------------------------------------------------ loading
    def _read_settings(self) -> Dict[str, Any]:
        env = os.environ if self._environ is None else self._environ
        autoload = (not _env_flag(env, ENV_DISABLE)) if self._autoload_arg is None else bool(self._autoload_arg)
        allow = _name_list(env.get(ENV_ALLOW)) if self._allow_arg is None else _name_list(self._allow_arg)
        block = _name_list(env.get(ENV_BLOCK)) if self._block_arg is None else _name_list(self._block_arg)
        return {"autoload": autoload, "allow": allow, "block": block or []}

    def _load(self) -> None:
        self.settings = s = self._read_settings()
        if self._builtins:
            from canvas_core.plugins import builtin

            rec = PluginRecord(BUILTIN_PLUGIN, "canvas-core", _core_version(), source="builtin")
            self._add_plugin(builtin, rec, strict=False)
        eps = self._discover()
        for ep in eps:
            self._load_entry_point(ep, s)
        _warn_unknown_names(s, eps)

    def _discover(self) -> List[Any]:
        if self._entry_points is not None:
            eps = list(self._entry_points())
        else:
            from importlib.metadata import entry_points

            eps = list(entry_points(group=hookspecs.ENTRY_POINT_GROUP))
        seen, out = set(), []
        for ep in eps:
            key = (ep.name, ep.value, normalize_dist(_ep_dist(ep)[0] or ""))
            if key not in seen:
                seen.add(key)
                out.append(ep)
        return sorted(out, key=lambda e: (e.name, _ep_dist(e)[0] or ""))

    def _load_entry_point(self, ep: Any, s: Dict[str, Any]) -> None:
        dist, version = _ep_dist(ep)
        name = ep.name
        if name in self.records:  # two distributions using the same entry-point name
            name = f"{name}@{dist}"
        rec = PluginRecord(name, dist or "(unknown distribution)", version, source="entry-point",
                           entry_point=ep.value)
        self.records[name] = rec
        ids = {normalize_dist(ep.name), normalize_dist(dist or "")}
        if not s["autoload"]:
            rec.status, rec.error = STATUS_DISABLED, f"{ENV_DISABLE} is set"
            return
        if ids & set(s["block"]):
            rec.status, rec.error = STATUS_BLOCKED, f"blocked by {ENV_BLOCK}"
            return
        if s["allow"] is not None and not ids & set(s["allow"]):
            rec.status, rec.error = STATUS_BLOCKED, f"not in the allow-list {ENV_ALLOW}"
            return
        heavy_before = _heavy_modules()
        self.records[name] = rec
        self._loading_record = rec  # `@register_attention(...)` run by the import counts as this plugin's
        try:
            try:
                obj = ep.load()
            except BaseException as exc:  # noqa: BLE001 - a plugin must never take the core down
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self._fail(rec, f"import of {ep.value!r} raised {type(exc).__name__}: {exc}", exc)
                return
            self._add_plugin(obj, rec, strict=False)
        finally:
            self._loading_record = None
            heavy = sorted(_heavy_modules() - heavy_before)
            if heavy:
                rec.warnings.append(
                    f"loading it imported {', '.join(heavy)} while registering; give factories as lazy "
                    "'package.module:Object' strings (and import heavy packages inside those modules) so "
                    "that registering and listing plugins stay cheap")

    def _fail(self, rec: PluginRecord, message: str, exc: BaseException) -> None:
        rec.status = STATUS_FAILED
        rec.error = message
        rec.traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])

    def _add_plugin(self, obj: Any, rec: PluginRecord, *, strict: bool) -> PluginRecord:
        """Register ``obj`` with pluggy and run its hooks into the registries."""
        self.records[rec.name] = rec
        rec.plugin = obj
        try:
            self._pm.register(obj, name=rec.name)
        except Exception as exc:
            if strict:
                del self.records[rec.name]
                raise PluginError(f"cannot register {rec.describe()}: {type(exc).__name__}: {exc}") from exc
            self._fail(rec, f"registration failed: {type(exc).__name__}: {exc}", exc)
            return rec
        callers = self._pm.get_hookcallers(obj) or []
        rec.hooks = sorted(h.name for h in callers if h.name in hookspecs.HOOK_REGISTRY)
        unknown = sorted(h.name for h in callers if h.name not in hookspecs.HOOK_REGISTRY
                         and not all(i.optionalhook for i in h.get_hookimpls() if i.plugin is obj))
        if unknown:  # pluggy's validation: a marked function that matches no hook spec
            why = "; ".join(_unknown_hook_text(n) for n in unknown)
            msg = (f"unknown hook{'s' if len(unknown) > 1 else ''} {why}: no such hook in "
                   f"canvas_core.plugins.hookspecs (known: {', '.join(hookspecs.HOOK_NAMES)}); fix the "
                   "name, nothing of this plugin was registered")
            if strict:
                self._remove_plugin(rec.name)
                raise PluginError(f"cannot register {rec.describe()}: {msg}")
            rec.status, rec.error = STATUS_FAILED, msg
            self._discard(rec)
            return rec
        if not rec.hooks and not self.registered_by(rec.name):
            rec.warnings.append(
                "implements no canvas hook (check the names and the @canvas_core.hookimpl marker)")
        if strict and not rec.hooks:
            self._remove_plugin(rec.name)
            why = "; ".join(rec.warnings) or f"it has no @canvas_core.hookimpl function named {', '.join(hookspecs.HOOK_NAMES)}"
            raise PluginError(
                f"cannot register {rec.describe()} ({type(obj).__name__}): it implements no canvas hook "
                f"({why}). Decorate functions such as canvas_register_attention(registry) with "
                "@canvas_core.hookimpl")
        for hook_name in hookspecs.HOOK_NAMES:
            kind = hookspecs.HOOK_REGISTRY[hook_name]
            proxy = _PluginRegistry(self.registries[kind], rec, strict)
            for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
                if impl.plugin is not obj or impl.hookwrapper or getattr(impl, "wrapper", False):
                    continue
                try:
                    impl.function(**{a: proxy for a in impl.argnames})
                except BaseException as exc:  # noqa: BLE001
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    if strict:
                        self._remove_plugin(rec.name)
                        from canvas_core.errors import CanvasError

                        if isinstance(exc, CanvasError) or not isinstance(exc, Exception):
                            raise
                        raise PluginError(
                            f"{rec.describe()}: hook {hook_name} raised {type(exc).__name__}: {exc}. "
                            "Fix the plugin's hook; nothing it registered was kept") from exc
                    self._fail(rec, f"hook {hook_name} raised {type(exc).__name__}: {exc}", exc)
                    # all or nothing: a half-registered plugin would run with parts missing
                    self._discard(rec)
                    return rec
        return rec

    def _discard(self, rec: PluginRecord) -> None:
        """Remove everything a failed plugin registered (its record stays, status failed)."""
        for kind, reg in self.registries.items():
            for spec in reg.remove_plugin(rec.name):
                names = rec.attempted.setdefault(kind, [])
                if spec.name not in names:
                    names.append(spec.name)
        if rec.plugin is not None and self._pm.is_registered(rec.plugin):
            self._pm.unregister(rec.plugin)

    def _remove_plugin(self, name: str) -> Optional[PluginRecord]:
        rec = self.records.pop(name, None)
        if rec is None:
            return None
        if rec.plugin is not None and self._pm.is_registered(rec.plugin):
            self._pm.unregister(rec.plugin)
        for reg in self.registries.values():
            reg.remove_plugin(name)
        return rec

    # ------------------------------------------------------------------ runtime plugins
    def register_plugin(self, plugin: Any, name: Optional[str] = None, *, distribution: Optional[str] = None,
                        version: str = "") -> PluginRecord:
        """Register a plugin object now (testing kit, applications); its hooks run at once.

        Errors in its hooks (and name clashes) are raised, and nothing it added stays.
        """
        self.ensure_loaded()
        if name is None:
            name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{id(plugin):x}"
        with self._lock:
            if name in self.records:
                raise PluginError(
                    f"a plugin named {name!r} is already registered ({self.records[name].describe()}); "
                    "pass another name= or unregister it first")
            if self._pm.is_registered(plugin):
                other = self._pm.get_name(plugin)
                raise PluginError(
                    f"this plugin object is already registered as plugin {other!r} (e.g. loaded from "
                    "its installed entry point); unregister it first, or test against a host without "
                    "autoloading: canvas_core.testing.isolated_plugins(autoload=False) or "
                    f"{ENV_DISABLE}=1")
            rec = PluginRecord(name, distribution or IN_PROCESS, version, source="manual")
            return self._add_plugin(plugin, rec, strict=True)

    def unregister_plugin(self, plugin: Any) -> Optional[PluginRecord]:
        """Remove a plugin (by name or object) and everything it registered."""
        self.ensure_loaded()
        with self._lock:
            if not isinstance(plugin, str):
                for rec in self.records.values():
                    if rec.plugin is plugin:
                        plugin = rec.name
                        break
                else:
                    return None
            return self._remove_plugin(plugin)

    def register(self, kind: str, name: Any, factory: Any = None, *, override: bool = False,
                 module: Optional[str] = None, **metadata: Any) -> Spec:
        """In-process registration (``register_attention(...)`` and friends)."""
        reg = self.registry(kind)
        loading = self._loading_record
        if loading is not None and self._loading_thread == threading.get_ident():
            # a decorator run while an installed plugin is imported: that plugin provides the name
            proxy = _PluginRegistry(reg, loading, strict=False)
            spec = proxy.make(name, factory, metadata, module=module)
            return proxy.add_spec(spec, override=override) or spec
        with self._lock:
            rec = self.records.get(IN_PROCESS)
            if rec is None:
                rec = self.records[IN_PROCESS] = PluginRecord(IN_PROCESS, IN_PROCESS, "", source="in-process")
            spec = reg.make_spec(name, factory, metadata, module=module)
            return reg._insert(spec, override=override)

    def unregister(self, kind: str, name: str) -> Spec:
        """Remove the current registration of ``name`` (an overridden one comes back)."""
        with self._lock:
            return self.registry(kind).remove(name)

    # ------------------------------------------------------------------ errors
    def missing_name_error(self, kind: str, name: Any) -> Exception:
        """The error for a lookup of a name that is not registered (see module docstring)."""
        reg = self.registries[kind]
        noun = NOUNS[kind]
        known = sorted(reg._stacks)
        dist_hint = provider_hint(kind, str(name))
        for rec in self.records.values():
            if rec.status == STATUS_OK:
                continue
            by_name = normalize_dist(rec.name.split("@", 1)[0]) == normalize_dist(str(name))
            by_dist = dist_hint is not None and normalize_dist(rec.distribution) == normalize_dist(dist_hint)
            by_attempt = str(name) in rec.attempted.get(kind, ())  # registered before it failed
            if not (by_name or by_dist or by_attempt):
                continue
            if rec.status == STATUS_FAILED:
                err = PluginLoadError(
                    f"{noun} {name!r} would be provided by {rec.describe()}, which failed to load: "
                    f"{rec.error}. Fix or reinstall {rec.distribution} (pip install --force-reinstall "
                    f"{rec.distribution}), or see `canvas plugins` for details.")
            else:
                if rec.status == STATUS_DISABLED:
                    fix = f"unset {ENV_DISABLE} to load installed plugins"
                elif ENV_BLOCK in (rec.error or ""):
                    fix = f"remove it from {ENV_BLOCK}"
                else:
                    fix = f"add {rec.name!r} to {ENV_ALLOW}"
                err = UnknownNameKeyError(
                    f"unknown {noun} {name!r}: it is provided by {rec.describe()}, which is installed "
                    f"but not loaded ({rec.error}); {fix}.")
            _attach(err, name=name, kind=kind, known=known, suggestion=None, distribution=rec.distribution,
                    plugin=rec.name)
            return err
        near = closest(str(name), known)
        msg = f"unknown {noun} {name!r}."
        if dist_hint is not None:
            if self._dist_installed(dist_hint):
                msg += (f" The distribution {dist_hint} is installed but does not register it; "
                        f"upgrade it (pip install -U {dist_hint}) or check `canvas plugins`.")
            else:
                msg += (f" It is provided by the distribution {dist_hint}, which is not installed: "
                        f"{install_hint(dist_hint)}.")
        if near is not None:
            msg += f" Did you mean {near!r}?"
        msg += f" Known {noun}s: {', '.join(known) or '(none)'}."
        failed = [r for r in self.records.values() if r.status == STATUS_FAILED]
        if failed:
            msg += " Note: " + "; ".join(f"{r.describe()} failed to load ({r.error})" for r in failed) + "."
        skipped: Dict[str, List[str]] = {}
        for r in self.records.values():
            if r.status in (STATUS_BLOCKED, STATUS_DISABLED):
                skipped.setdefault(r.error or r.status, []).append(r.name)
        if skipped:
            msg += (" Installed but not loaded, so their names are unknown here: "
                    + "; ".join(f"{', '.join(ns)} ({why})" for why, ns in skipped.items()) + ".")
        err = UnknownNameKeyError(msg)
        _attach(err, name=name, kind=kind, known=known, suggestion=near, distribution=dist_hint, plugin=None)
        return err

    def _dist_installed(self, dist: str) -> bool:
        want = normalize_dist(dist)
        if any(normalize_dist(r.distribution) == want for r in self.records.values()):
            return True
        if self._entry_points is not None:  # an injected world: only what the host saw counts
            return False
        try:
            from importlib.metadata import PackageNotFoundError, distribution

            distribution(dist)
            return True
        except PackageNotFoundError:
            return False
        except Exception:
            return False

    # ------------------------------------------------------------------ reports
    def registered_by(self, plugin: str) -> Dict[str, List[str]]:
        """kind -> names registered by ``plugin`` (overridden registrations included)."""
        out: Dict[str, List[str]] = {}
        for kind, reg in self.registries.items():
            names = sorted({s.name for stack in reg._stacks.values() for s in stack if s.plugin == plugin})
            if names:
                out[kind] = names
        return out

    def plugin_report(self) -> List[Dict[str, Any]]:
        """One dict per plugin: name, distribution, version, source, entry point, status
        (ok / failed / blocked / disabled), error, hooks, registered names per registry,
        conflicts, warnings."""
        self.ensure_loaded()
        return [rec.to_dict(self.registered_by(rec.name)) for rec in self.records.values()]

    def registry_report(self, ctx: Any = None) -> Dict[str, List[Dict[str, Any]]]:
        """kind -> one dict per registered name, with availability in ``ctx``."""
        self.ensure_loaded()
        ctx = RuntimeContext.coerce(ctx)
        out: Dict[str, List[Dict[str, Any]]] = {}
        for kind, reg in self.registries.items():
            rows = []
            conflicts = reg.conflicts()
            for spec in reg.specs():
                d = spec.to_dict(ctx)
                if spec.name in conflicts:
                    d["available"] = False
                    d["reasons"] = [conflicts[spec.name]] + d["reasons"]
                    d["conflict"] = conflicts[spec.name]
                rows.append(d)
            out[kind] = rows
        return out


def _attach(err: Exception, **attrs: Any) -> None:
    for k, v in attrs.items():
        setattr(err, k, v)


def _ep_dist(ep: Any) -> tuple:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, ""
    name = getattr(dist, "name", None)
    if not name:
        try:
            name = dist.metadata["Name"]
        except Exception:
            name = None
    return name, str(getattr(dist, "version", "") or "")


def _warn_unknown_names(settings: Dict[str, Any], eps: List[Any]) -> None:
    """Warn when the allow / block list names no installed plugin (likely a typo)."""
    import warnings

    known = set()
    for ep in eps:
        known |= {normalize_dist(ep.name), normalize_dist(_ep_dist(ep)[0] or "")}
    known.discard("")
    for var, key in ((ENV_ALLOW, "allow"), (ENV_BLOCK, "block")):
        unknown = [n for n in (settings.get(key) or []) if n not in known]
        if unknown:
            near = {n: closest(n, known) for n in unknown}
            hint = "".join(f" ({n!r}: did you mean {c!r}?)" for n, c in near.items() if c)
            # attributed to the environment variable (one line, no source line of ours)
            warnings.warn_explicit(
                f"{var} names {', '.join(repr(n) for n in unknown)}, which is no installed canvas "
                f"plugin{hint}. Installed: {', '.join(sorted(known)) or 'none'}",
                UserWarning, filename=f"${var}", lineno=0, module="canvas_core.plugins")


def _unknown_hook_text(name: str) -> str:
    near = closest(name, hookspecs.HOOK_NAMES)
    return repr(name) + (f" (did you mean {near!r}?)" if near else "")


#: packages a plugin must not import just to register (lazy factories instead).
HEAVY_MODULES = ("torch", "diffusers", "timm", "mamba_ssm", "transformers", "xformers", "triton")


def _heavy_modules() -> set:
    import sys

    return {m for m in HEAVY_MODULES if m in sys.modules}


# ---------------------------------------------------------------------- default host
_default_host: Optional[PluginHost] = None
_default_lock = threading.Lock()


def get_host() -> PluginHost:
    """The default host used by the module-level API (created on first use)."""
    global _default_host
    if _default_host is None:
        with _default_lock:
            if _default_host is None:
                _default_host = PluginHost()
    return _default_host


def set_host(host: Optional[PluginHost]) -> Optional[PluginHost]:
    """Replace the default host (None: a fresh one is created on next use); returns the old one."""
    global _default_host
    with _default_lock:
        old, _default_host = _default_host, host
    return old


@contextlib.contextmanager
def use_host(host: Optional[PluginHost] = None) -> Iterator[PluginHost]:
    """Run a block against ``host`` (default: a fresh :class:`PluginHost`), then restore."""
    host = PluginHost() if host is None else host
    old = set_host(host)
    try:
        yield host
    finally:
        set_host(old)


def reset_plugins() -> None:
    """Reset the default host: plugins and the environment are read again on next use."""
    get_host().reset()


def get_plugin_manager() -> pluggy.PluginManager:
    """The default host's loaded pluggy ``PluginManager("canvas")``."""
    return get_host().plugin_manager
