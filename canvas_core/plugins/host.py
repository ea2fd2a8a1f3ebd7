"""The plugin host: one pluggy manager, the registries it fills, a record of every plugin.  The
first registry access loads the builtin plugin, then each allowed entry point of group ``canvas``,
running its hooks one plugin at a time; a plugin whose import or hook raises is recorded as
``failed`` and removed, the others keep working.  Tests use ``use_host(PluginHost(...))``."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional

import pluggy

from canvas_core.errors import CanvasError, PluginError, PluginLoadError, UnknownNameError, closest  # noqa: F401
from canvas_core.plugins import hookspecs, reports
from canvas_core.plugins.hints import exc_text, normalize_dist, provider_hint  # noqa: F401
from canvas_core.plugins.loading import (
    ENV_ALLOW, ENV_BLOCK, ENV_DISABLE, STATUS_BLOCKED, STATUS_DISABLED, STATUS_FAILED, STATUS_OK,
    PluginRecord, discover_entry_points, entry_point_distribution, entry_point_ids, read_settings,
    waits_for_current_thread, warn_unknown_names, watch_plugin_load,
)
from canvas_core.plugins.registry import API_STEMS, BUILTIN_PLUGIN, KINDS, NOUNS, Registry, UnknownNameKeyError, check_kind  # noqa: F401
from canvas_core.plugins.scoped import PluginScopedRegistry
from canvas_core.plugins.spec import IN_PROCESS, Spec
# the error for a name nobody provides (the two helpers stay importable from here)
from canvas_core.plugins.unknown_names import _attach, _unloaded_provider_error, unknown_name_error  # noqa: F401

_ONE = API_STEMS  # registry kind -> the stem of its register_* / unregister_* functions


class PluginHost:
    """Plugin manager + registries + plugin records.  ``autoload`` / ``allow`` / ``block``
    override the environment controls (:mod:`~canvas_core.plugins.loading`) read from ``environ``
    (default ``os.environ``); ``entry_points``: a callable giving the entry points (tests' fakes)."""

    def __init__(self, *, autoload: Optional[bool] = None, allow: Optional[Iterable[str]] = None,
                 block: Optional[Iterable[str]] = None,
                 entry_points: Optional[Callable[[], Iterable[Any]]] = None,
                 environ: Optional[Mapping[str, str]] = None) -> None:
        self._args = {"autoload": autoload, "allow": allow, "block": block}
        self._entry_points, self._environ = entry_points, environ
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        """Forget everything (in-process registrations too); the next access loads again.  Refused
        (PluginError) from inside the load itself (a plugin's import or hook): it would drop the
        builtins and the plugins loaded so far for the rest of the process."""
        with self._locked():
            if getattr(self, "_loading_thread", None) == threading.get_ident():
                rec = self._loading_record
                by = f" by {rec.describe()}" if rec is not None else ""
                raise PluginError(
                    f"reset_plugins() / PluginHost.reset() was called while the plugins load{by}: refused, "
                    "it would discard the builtins and every plugin loaded so far. Call it after loading, "
                    "never from a plugin's import or hook")
            self._pm = hookspecs.CanvasPluginManager()
            self.registries: Dict[str, Registry] = {k: Registry(k) for k in KINDS}
            self.records: Dict[str, PluginRecord] = {}
            self.settings: Dict[str, Any] = {}  # the controls the last load used (loading.read_settings)
            self.loaded = False
            self._loading_thread: Optional[int] = None
            self._loading_record: Optional[PluginRecord] = None  # the installed plugin being imported
            self._hooks_thread: Optional[int] = None  # the thread running register_plugin's hooks

    def ensure_loaded(self) -> None:
        """Load builtins and entry-point plugins once (no-op afterwards, and while loading)."""
        if self.loaded or self._loading_thread == threading.get_ident():
            return  # loaded, or a hook of the loading thread reads a registry
        with self._locked():  # another thread loading: wait for it
            if self.loaded:
                return
            # a bad variable raises, leaving it unloaded
            settings = read_settings(os.environ if self._environ is None else self._environ, **self._args)
            self._loading_thread = threading.get_ident()
            interrupted = False
            try:
                self._load(settings)
            except KeyboardInterrupt:  # the only exception a plugin's import or hook lets through
                interrupted = True
                raise
            finally:
                self._loading_thread = None
                if interrupted:  # a load cut short is not kept half done: the next access loads again
                    self.reset()
                else:
                    self.loaded = True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the host's lock, waiting while another thread holds it (loading plugins, running a
        plugin's hooks); a wait that could never end (that thread is joining this one) raises
        PluginLoadError here instead, and fails the installed plugin being loaded."""
        first_seen: Optional[float] = None  # when the loader's current wait for this thread was first seen
        waits = 0  # how many separate waits for this thread were seen (a third one: a join loop)
        while not self._lock.acquire(timeout=0.05):
            loader = getattr(self, "_loading_thread", None) or getattr(self, "_hooks_thread", None)
            rec = getattr(self, "_loading_record", None)
            wait = None if loader is None else waits_for_current_thread(loader)
            if wait is None:  # not waiting for us now
                first_seen = None
                continue
            now = time.monotonic()
            waits, first_seen = (waits + 1, now) if first_seen is None else (waits, first_seen)
            if wait < float("inf") and now - first_seen <= wait + 0.1 and waits < 3:  # a timed wait ends
                continue
            who = rec.describe() if rec is not None else "a plugin"
            msg = (f"thread {threading.current_thread().name!r} uses the canvas registries while {who} loads, and "
                   "the loading thread waits for that thread (Thread.join / Future.result): a deadlock, refused. "
                   "A plugin's import or hook must not wait for a thread that uses the registries: register with "
                   "the hook's registry.add, or start such threads after loading")
            if rec is not None and rec.status == STATUS_OK:  # safe: its loading thread is blocked on us
                rec.mark_failed(msg)
            raise PluginLoadError(msg)
        try:
            yield
        finally:
            self._lock.release()

    @property
    def plugin_manager(self) -> pluggy.PluginManager:
        self.ensure_loaded()
        return self._pm

    def registry(self, kind: str) -> Registry:
        check_kind(kind)
        self.ensure_loaded()
        return self.registries[kind]

    def lookup(self, kind: str, name: Any) -> Spec:
        """``registry(kind).get(name)``; a name nobody provides raises :meth:`missing_name_error`."""
        try:
            return self.registry(kind).get(name)  # one read; two plugins providing it raise their clash
        except UnknownNameError:
            raise self.missing_name_error(kind, name) from None

    def _load(self, s: Dict[str, Any]) -> None:
        self.settings = s
        from canvas_core import __version__
        from canvas_core.plugins import builtin

        self._add_plugin(builtin, PluginRecord(BUILTIN_PLUGIN, "canvas-core", __version__, source="builtin"),
                         strict=False)
        for name in set(s["block"]) - {BUILTIN_PLUGIN}:  # pluggy's own block-list; not the builtin plugin
            self._pm.set_blocked(name)
        eps = discover_entry_points(self._entry_points)
        for ep in eps:
            self._load_entry_point(ep, s)
        warn_unknown_names(s, set().union(*(entry_point_ids(ep) for ep in eps)))

    def _load_entry_point(self, ep: Any, s: Dict[str, Any]) -> None:
        dist, version = entry_point_distribution(ep)
        name = ep.name if ep.name not in self.records else f"{ep.name}@{dist}"  # same name, two dists
        rec = self._keep(PluginRecord(name, dist or "(unknown distribution)", version,
                                      source="entry-point", entry_point=ep.value))
        ids = entry_point_ids(ep)
        if not s["autoload"]:
            rec.status, rec.error = STATUS_DISABLED, f"{ENV_DISABLE} is set"
            return
        if any(self._pm.is_blocked(i) for i in ids):
            rec.status, rec.error = STATUS_BLOCKED, f"blocked by {ENV_BLOCK}"
            return
        if s["allow"] is not None and not ids & set(s["allow"]):
            self._pm.set_blocked(name)
            rec.status, rec.error = STATUS_BLOCKED, f"not in the allow-list {ENV_ALLOW}"
            return
        self._loading_record = rec  # `@register_attention(...)` run by the import counts as this plugin's
        try:
            with watch_plugin_load(name, dist, ep.value, rec.warnings):  # slow or heavy imports are noted
                try:
                    obj = ep.load()
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # noqa: BLE001 - a plugin must never take the core down
                    rec.mark_failed(f"import of {ep.value!r} raised {exc_text(exc)}", exc)
                    self._discard(rec)  # what its import registered before raising goes too
                    return
                self._add_plugin(obj, rec, strict=False)  # hooks too: their registrations are this plugin's
            if rec.status == STATUS_FAILED:  # failed by a thread it waited for (_locked)
                self._discard(rec)
        finally:
            self._loading_record = None

    def _add_plugin(self, obj: Any, rec: PluginRecord, *, strict: bool) -> PluginRecord:
        """Register ``obj`` with pluggy and run its hooks into the registries (all or nothing):
        a failure marks ``rec`` failed and removes what it added, or under ``strict`` raises."""
        self._keep(rec).plugin = obj

        def fail(message: str, strict_message: str, exc: Optional[BaseException] = None) -> PluginRecord:
            if strict:
                self.unregister_plugin(rec.name)
                raise PluginError(strict_message) from exc
            rec.mark_failed(message, exc)
            self._discard(rec)  # a plugin with half of its names would run with parts missing
            return rec

        try:
            self._pm.register(obj, name=rec.name)
        except Exception as exc:  # nothing of it was registered: nothing to discard
            if strict:
                del self.records[rec.name]
                raise PluginError(f"cannot register {rec.describe()}: {exc_text(exc)}") from exc
            rec.mark_failed(f"registration failed: {exc_text(exc)}", exc)
            return rec
        callers = self._pm.get_hookcallers(obj) or []
        rec.hooks = sorted(h.name for h in callers if h.name in hookspecs.HOOK_REGISTRY)
        unknown = sorted(h.name for h in callers if h.name not in hookspecs.HOOK_REGISTRY
                         and not all(i.optionalhook for i in h.get_hookimpls() if i.plugin is obj))
        if unknown:  # a marked function that matches no hook spec fails the plugin, as pluggy's validation
            why = "; ".join(hookspecs.describe_unknown_hook(n) for n in unknown)
            msg = (f"unknown hook{'s' if len(unknown) > 1 else ''} {why}: no such hook in "
                   f"canvas_core.plugins.hookspecs (known: {', '.join(hookspecs.HOOK_NAMES)}); fix the "
                   "name, nothing of this plugin was registered")
            return fail(msg, f"cannot register {rec.describe()}: {msg}")
        if misspelt := hookspecs.misspelt_hooks(obj):  # unmarked and no hook's exact name: not a hook under the rule
            rec.warnings.append("misspelt hook " + "; ".join(hookspecs.describe_unknown_hook(n) for n in misspelt)
                                + ": not called (an error under `canvas plugins --strict`)")
        if not rec.hooks and not self.registered_by(rec.name):
            rec.warnings.append("implements no canvas hook (check the names and the @canvas_core.hookimpl marker)")
        if strict and not rec.hooks:
            why = "; ".join(rec.warnings) or f"it has no @canvas_core.hookimpl function named {', '.join(hookspecs.HOOK_NAMES)}"
            fail("", f"cannot register {rec.describe()} ({type(obj).__name__}): it implements no canvas hook "
                     f"({why}). Decorate functions such as canvas_register_attention(registry) with "
                     "@canvas_core.hookimpl")
        for hook_name, kind in hookspecs.HOOK_REGISTRY.items():  # one plugin, one hook at a time
            view = PluginScopedRegistry(self.registries[kind], rec, strict)
            for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
                if impl.plugin is not obj or impl.hookwrapper or getattr(impl, "wrapper", False):
                    continue
                try:
                    impl.function(**{a: view for a in impl.argnames})
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # noqa: BLE001 - isolated: the plugin fails, not the core
                    if strict and (isinstance(exc, CanvasError) or not isinstance(exc, Exception)):
                        self.unregister_plugin(rec.name)
                        raise
                    why = f"hook {hook_name} raised {exc_text(exc)}"
                    if isinstance(obj, type) and isinstance(exc, TypeError) and "'self'" in why:
                        why += (f" (the plugin object is the class {obj.__qualname__}, so its hook methods get "
                                "no instance: point the entry point at an instance, or make the hooks "
                                "static methods)")
                    return fail(why, f"{rec.describe()}: {why}. Fix the plugin's hook; nothing it registered "
                                     "was kept", exc)
        return rec

    def _keep(self, rec: PluginRecord) -> PluginRecord:
        """Keep ``rec`` as the record of its plugin; its ``conflicts`` are read off this host."""
        self.records[rec.name], rec.clash_source = rec, self.conflicts_of
        return rec

    def _discard(self, rec: PluginRecord) -> None:
        """Remove everything ``rec``'s plugin registered (``rec.attempted`` has its names: insert added them)."""
        for reg in self.registries.values():
            reg.remove_plugin(rec.name)
        if rec.plugin is not None and self._pm.is_registered(rec.plugin):
            self._pm.unregister(rec.plugin)

    def register_plugin(self, plugin: Any, name: Optional[str] = None, *, distribution: Optional[str] = None,
                        version: str = "") -> PluginRecord:
        """Register a plugin object now; errors in its hooks and clashes raise, and nothing it
        added stays."""
        self.ensure_loaded()
        if name is None:
            name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{id(plugin):x}"
        with self._locked():  # a thread this one's hook joins: an error, not a hang
            if name in self.records:
                raise PluginError(
                    f"a plugin named {name!r} is already registered ({self.records[name].describe()}); "
                    "pass another name= or unregister it first")
            if self._pm.is_registered(plugin):
                raise PluginError(
                    f"this plugin object is already registered as plugin {self._pm.get_name(plugin)!r} (e.g. "
                    "loaded from its installed entry point); unregister it first, or test against a host "
                    "without autoloading: canvas_core.testing.isolated_plugins(autoload=False) or "
                    f"{ENV_DISABLE}=1")
            rec = PluginRecord(name, distribution or IN_PROCESS, version, source="manual")
            # for _locked: the thread its hooks run in (restored: register_plugin may run inside a hook)
            outer, self._hooks_thread = self._hooks_thread, threading.get_ident()
            try:
                return self._add_plugin(plugin, rec, strict=True)
            finally:
                self._hooks_thread = outer

    def unregister_plugin(self, plugin: Any) -> Optional[PluginRecord]:
        """Remove a plugin (by name or object) and everything it registered."""
        self.ensure_loaded()
        with self._locked():
            if not isinstance(plugin, str):
                plugin = next((r.name for r in self.records.values() if r.plugin is plugin), None)
            if (rec := self.records.pop(plugin, None)) is not None:
                self._discard(rec)
                rec.clash_source = None  # no longer this host's: it has no clashes here
            return rec

    def register(self, kind: str, name: Any, factory: Any = None, *, override: bool = False,
                 module: Optional[str] = None, **metadata: Any) -> Spec:
        """In-process registration (``register_attention(...)`` and friends)."""
        reg = self.registry(kind)  # waits while another thread loads plugins
        if self._loading_record is not None:  # so this thread is importing an installed plugin: it provides the name
            stored, spec = PluginScopedRegistry(reg, self._loading_record, strict=False).insert(
                name, factory, metadata, override, module)
            return stored or spec
        with self._locked():  # a plugin's hook waiting for this thread: an error, not a hang
            if IN_PROCESS not in self.records:
                self._keep(PluginRecord(IN_PROCESS, IN_PROCESS, "", source="in-process"))
            return reg.insert(reg.make_spec(name, factory, metadata, module=module), override=override)

    def unregister(self, kind: str, name: str) -> Spec:
        """Remove the current registration of ``name`` when it was made in this process
        (``register_*``); the registration it had overridden comes back.  A name whose current
        provider is the builtin plugin or an installed / manually registered plugin is refused
        (``PluginError`` saying what to do instead), so a builtin cannot vanish for the process."""
        reg = self.registry(kind)
        with self._locked():
            top = reg.current(name)  # UnknownNameError (closest names) when nobody provides it
            if top.plugin != IN_PROCESS:
                noun = NOUNS[kind]
                if top.plugin == BUILTIN_PLUGIN:
                    how = (f"builtins stay registered: to replace it, register_{_ONE[kind]}({name!r}, ..., "
                           "override=True) (unregistering that brings the builtin back)")
                else:
                    how = (f"to remove everything that plugin registered, canvas_core.plugins.get_host()."
                           f"unregister_plugin({top.plugin!r}); to keep it from loading, set "
                           f"{ENV_BLOCK}={top.plugin} before the process first uses a registry")
                raise PluginError(
                    f"cannot unregister {noun} {name!r}: it is provided by {top.describe_provider()}, not "
                    f"registered in this process (unregister_{_ONE[kind]} removes only what register_{_ONE[kind]} "
                    f"added); {how}. reset_plugins() rebuilds every registry from the installed plugins")
            return reg.remove(name)

    def missing_name_error(self, kind: str, name: Any) -> Exception:
        """The error for ``name`` nobody provides in registry ``kind``: the installed plugin that
        would provide it and did not load, else the known names, the closest one and the install
        hint; it carries ``name``, ``kind``, ``known``, ``suggestion``, ``distribution``, ``plugin``."""
        with self._locked():  # one consistent view: the records and the names of the same moment
            records, known = list(self.records.values()), self.registries[kind].names()
        return unknown_name_error(kind, name, records, known, lambda dist: self.distribution_installed(dist, records))

    def distribution_installed(self, dist: str, records: Optional[List[PluginRecord]] = None) -> bool:
        """Seen by the host (``records``, default its records now) or, reading real entry points, installed."""
        if records is None:
            with self._locked():
                records = list(self.records.values())
        seen = any(normalize_dist(r.distribution) == normalize_dist(dist) for r in records)
        if seen or self._entry_points is not None:  # a test world: only what the host saw counts
            return seen
        with contextlib.suppress(Exception):  # PackageNotFoundError, or broken metadata
            return importlib.metadata.distribution(dist) is not None
        return False

    def registered_by(self, plugin: str) -> Dict[str, List[str]]:
        return reports.registered_by(self._states(), plugin)

    def conflicts_of(self, plugin: str) -> List[str]:
        """The clashes of ``plugin``'s refused registrations that hold now (its name fought over, or
        kept by a builtin), read off each registry's current state, so one goes and comes back with
        the registration it was against (``unregister_plugin``, an override removed)."""
        return reports.clashes(self._states()).get(plugin, [])

    def _states(self) -> Dict[str, Any]:  # every registry's state, of one moment (writers hold the lock)
        self.ensure_loaded()
        with self._locked():
            return {kind: reg.snapshot() for kind, reg in self.registries.items()}

    def snapshot(self) -> reports.HostSnapshot:
        """The records, every registry's state and the settings, of one moment (for reports)."""
        return reports.take(self)

    def plugin_report(self, snapshot: Optional[reports.HostSnapshot] = None) -> List[Dict[str, Any]]:
        """One ``PluginRecord.to_dict`` per plugin (its clashes derived now, never text kept from
        registration time), from ``snapshot`` (default: one taken now)."""
        return reports.plugin_rows(snapshot or self.snapshot())

    def registry_report(self, ctx: Any = None, snapshot: Optional[reports.HostSnapshot] = None
                        ) -> Dict[str, List[Dict[str, Any]]]:
        """Registry kind -> one row per name (:func:`~canvas_core.plugins.reports.registry_rows`),
        from ``snapshot`` (default: one taken now under the host's lock)."""
        return reports.registry_rows(snapshot or self.snapshot(), ctx)


_default_host: Optional[PluginHost] = None
_default_lock = threading.Lock()


def get_host() -> PluginHost:
    """The default host of the module-level API (created on first use)."""
    global _default_host
    with _default_lock:
        _default_host = _default_host or PluginHost()
        return _default_host


def set_host(host: Optional[PluginHost]) -> Optional[PluginHost]:
    """Replace the default host (None: a fresh one on next use); returns the old one."""
    global _default_host
    with _default_lock:
        old, _default_host = _default_host, host
        return old


@contextlib.contextmanager
def use_host(host: Optional[PluginHost] = None) -> Iterator[PluginHost]:
    """Run a block against ``host`` (default: a fresh :class:`PluginHost`), then restore."""
    old = set_host(host := PluginHost() if host is None else host)
    try:
        yield host
    finally:
        set_host(old)


def reset_plugins() -> None:
    """Reset the default host: plugins and the environment are read again on next use."""
    get_host().reset()


def get_plugin_manager() -> pluggy.PluginManager:
    return get_host().plugin_manager
