"""The plugin host: one pluggy manager, the registries it fills, and a record of every plugin.

A :class:`PluginHost` owns everything the plugin layer knows, so tests can build a fresh one
(``with use_host(PluginHost(...)):``) instead of mutating globals.  The module-level API
(``register_attention``, ``create_attention``, ...) works on a default host created on first use.

Loading happens on the first registry access: the builtin plugin registers, then the entry points
of group ``canvas`` that the environment controls allow (:mod:`~canvas_core.plugins.settings`,
found by :mod:`~canvas_core.plugins.discovery`) are imported, and each plugin's hooks run *one
plugin at a time* with a registry proxy that stamps the plugin's distribution and version on what
it adds.  A plugin whose import or hook raises is recorded (status ``failed``, with the error) and
the others keep working.  Clashes between plugins are settled by the registry
(:meth:`~canvas_core.plugins.registry.Registry.add_from_plugin`); the messages and reports for
people live in :mod:`~canvas_core.plugins.diagnostics`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional

import pluggy

from canvas_core.errors import CanvasError, PluginError
from canvas_core.plugins import diagnostics, hookspecs
from canvas_core.plugins.watchdog import watch_plugin_load
from canvas_core.plugins.discovery import (
    HEAVY_MODULES,
    discover_entry_points,
    entry_point_distribution,
    entry_point_ids,
    heavy_import_warning,
    imported_heavy_modules,
    new_plugin_manager,
)
from canvas_core.plugins.hook_runner import PluginScopedRegistry, hook_names, run_registration_hooks
from canvas_core.plugins.records import (
    STATUS_BLOCKED,
    STATUS_DISABLED,
    STATUS_FAILED,
    STATUS_OK,
    PluginRecord,
    core_version,
)
from canvas_core.plugins.registry import BUILTIN_PLUGIN, KINDS, Registry
from canvas_core.plugins.settings import ENV_ALLOW, ENV_BLOCK, ENV_DISABLE, read_settings, warn_unknown_names
from canvas_core.plugins.spec import IN_PROCESS, Spec

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
    "HEAVY_MODULES",
    "STATUS_OK",
    "STATUS_FAILED",
    "STATUS_BLOCKED",
    "STATUS_DISABLED",
]


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
        self._pm = new_plugin_manager()
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
    def _read_settings(self):
        env = os.environ if self._environ is None else self._environ
        return read_settings(env, autoload=self._autoload_arg, allow=self._allow_arg, block=self._block_arg)

    def _load(self) -> None:
        s = self._read_settings()
        self.settings = s.as_dict()
        if self._builtins:
            from canvas_core.plugins import builtin

            rec = PluginRecord(BUILTIN_PLUGIN, "canvas-core", core_version(), source="builtin")
            self._add_plugin(builtin, rec, strict=False)
        eps = discover_entry_points(self._entry_points)
        for ep in eps:
            self._load_entry_point(ep, s)
        warn_unknown_names(s, set().union(*(entry_point_ids(ep) for ep in eps)))

    def _load_entry_point(self, ep: Any, s: Any) -> None:
        dist, version = entry_point_distribution(ep)
        name = ep.name
        if name in self.records:  # two distributions using the same entry-point name
            name = f"{name}@{dist}"
        rec = PluginRecord(name, dist or "(unknown distribution)", version, source="entry-point",
                           entry_point=ep.value)
        self.records[name] = rec
        refusal = s.refusal(entry_point_ids(ep))
        if refusal is not None:
            rec.status, rec.error = refusal
            return
        heavy_before = imported_heavy_modules()
        self.records[name] = rec
        self._loading_record = rec  # `@register_attention(...)` run by the import counts as this plugin's
        try:
            # a slow import or registration is named on stderr while it runs (plugins/watchdog.py)
            with watch_plugin_load(name, dist, ep.value, rec.warnings):
                try:
                    obj = ep.load()
                except BaseException as exc:  # noqa: BLE001 - a plugin must never take the core down
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    rec.mark_failed(f"import of {ep.value!r} raised {type(exc).__name__}: {exc}", exc)
                    return
                self._add_plugin(obj, rec, strict=False)
        finally:
            self._loading_record = None
            warning = heavy_import_warning(heavy_before)
            if warning:
                rec.warnings.append(warning)

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
            rec.mark_failed(f"registration failed: {type(exc).__name__}: {exc}", exc)
            return rec
        rec.hooks, msg = hook_names(self._pm, obj)
        if msg is not None:  # a marked function that matches no hook spec
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
        failure = run_registration_hooks(self._pm, obj, rec, self.registries, strict=strict)
        if failure is not None:
            hook_name, exc = failure
            if strict:
                self._remove_plugin(rec.name)
                if isinstance(exc, CanvasError) or not isinstance(exc, Exception):
                    raise exc
                raise PluginError(
                    f"{rec.describe()}: hook {hook_name} raised {type(exc).__name__}: {exc}. "
                    "Fix the plugin's hook; nothing it registered was kept") from exc
            rec.mark_failed(f"hook {hook_name} raised {type(exc).__name__}: {exc}", exc)
            # all or nothing: a plugin with half of its names would run with parts missing
            self._discard(rec)
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
            proxy = PluginScopedRegistry(reg, loading, strict=False)
            spec = proxy.make(name, factory, metadata, module=module)
            return proxy.add_spec(spec, override=override) or spec
        with self._lock:
            rec = self.records.get(IN_PROCESS)
            if rec is None:
                rec = self.records[IN_PROCESS] = PluginRecord(IN_PROCESS, IN_PROCESS, "", source="in-process")
            spec = reg.make_spec(name, factory, metadata, module=module)
            return reg.insert(spec, override=override)

    def unregister(self, kind: str, name: str) -> Spec:
        """Remove the current registration of ``name`` (an overridden one comes back)."""
        with self._lock:
            return self.registry(kind).remove(name)

    # ------------------------------------------------------------------ messages and reports
    @property
    def injected_entry_points(self) -> bool:
        """Whether this host reads entry points from a callable given to it (a test world)."""
        return self._entry_points is not None

    def missing_name_error(self, kind: str, name: Any) -> Exception:
        """The error for a lookup of a name nothing provides (see
        :func:`~canvas_core.plugins.diagnostics.missing_name_error`)."""
        return diagnostics.missing_name_error(self, kind, name)

    def registered_by(self, plugin: str) -> Dict[str, List[str]]:
        """Registry kind -> names registered by ``plugin`` (overridden registrations included)."""
        return diagnostics.registered_by(self, plugin)

    def plugin_report(self) -> List[Dict[str, Any]]:
        """One dict per plugin: name, distribution, version, source, entry point, status
        (ok / failed / blocked / disabled), error, hooks, registered names per registry,
        conflicts, warnings."""
        return diagnostics.plugin_report(self)

    def registry_report(self, ctx: Any = None) -> Dict[str, List[Dict[str, Any]]]:
        """Registry kind -> one dict per registered name, with availability in ``ctx``."""
        return diagnostics.registry_report(self, ctx)


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
