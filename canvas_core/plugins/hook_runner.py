"""Running one plugin's registration hooks.

Each hook (``canvas_register_attention(registry)``, ...) receives a :class:`PluginScopedRegistry`:
the registry of its kind, seen through the plugin, so that whatever it adds is credited to the
plugin's distribution and a clash lands on the plugin's record.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import pluggy

from canvas_core.plugins import hookspecs
from canvas_core.plugins.discovery import describe_unknown_hook
from canvas_core.plugins.records import PluginRecord
from canvas_core.plugins.registry import Registry
from canvas_core.plugins.spec import Spec

__all__ = ["PluginScopedRegistry", "hook_names", "run_registration_hooks"]


class PluginScopedRegistry:
    """What a plugin's hook receives instead of the registry itself: ``add`` stamps the plugin's
    distribution and version, and a clash is noted on the plugin's record (the registry decides
    the outcome) instead of aborting the plugin."""

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
        """Register ``spec`` for this plugin (see :meth:`Registry.add_from_plugin` for clashes)."""
        rec = self._record
        rec.attempted.setdefault(self._registry.kind, []).append(spec.name)
        stored, clash = self._registry.add_from_plugin(spec, override=override, strict=self._strict,
                                                       plugin=rec.name)
        if clash is not None:
            rec.conflicts.append(str(clash))
        return stored

    # read access, for plugins that look at what is already registered
    def __contains__(self, name: object) -> bool:
        return name in self._registry

    def names(self) -> List[str]:
        return self._registry.names()

    def get(self, name: str, default: Any = None) -> Any:
        return self._registry.get(name, default)


def hook_names(pm: pluggy.PluginManager, obj: Any) -> Tuple[List[str], Optional[str]]:
    """``(canvas hooks obj implements, problem)``; the problem names marked functions that match
    no canvas hook (a misspelt hook), with the closest real name, else it is None."""
    callers = pm.get_hookcallers(obj) or []
    hooks = sorted(h.name for h in callers if h.name in hookspecs.HOOK_REGISTRY)
    unknown = sorted(h.name for h in callers if h.name not in hookspecs.HOOK_REGISTRY
                     and not all(i.optionalhook for i in h.get_hookimpls() if i.plugin is obj))
    if not unknown:
        return hooks, None
    why = "; ".join(describe_unknown_hook(n) for n in unknown)
    return hooks, (f"unknown hook{'s' if len(unknown) > 1 else ''} {why}: no such hook in "
                   f"canvas_core.plugins.hookspecs (known: {', '.join(hookspecs.HOOK_NAMES)}); fix the "
                   "name, nothing of this plugin was registered")


def run_registration_hooks(pm: pluggy.PluginManager, obj: Any, rec: PluginRecord,
                           registries: Mapping[str, Registry], *, strict: bool
                           ) -> Optional[Tuple[str, BaseException]]:
    """Call every registration hook ``obj`` implements, kind by kind in hook order.

    Stops at the first hook that raises and returns ``(hook name, exception)``; the caller
    decides what to undo.  ``KeyboardInterrupt`` is never caught.  Returns None on success.
    """
    for hook_name in hookspecs.HOOK_NAMES:
        kind = hookspecs.HOOK_REGISTRY[hook_name]
        proxy = PluginScopedRegistry(registries[kind], rec, strict)
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin is not obj or impl.hookwrapper or getattr(impl, "wrapper", False):
                continue
            try:
                impl.function(**{a: proxy for a in impl.argnames})
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - reported to the caller
                return hook_name, exc
    return None
