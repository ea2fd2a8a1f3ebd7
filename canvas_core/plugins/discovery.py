"""Finding installed plugins: entry points of group ``canvas`` and the pluggy manager they join.

This module only *finds* and *describes*; :class:`~canvas_core.plugins.host.PluginHost` decides
what to import (see :mod:`~canvas_core.plugins.settings`) and runs the hooks.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, Callable, Iterable, List, Optional, Set, Tuple

import pluggy

from canvas_core.plugins import hookspecs
from canvas_core.plugins.hints import normalize_dist
from canvas_core.plugins.registry import closest

__all__ = [
    "CanvasPluginManager", "new_plugin_manager", "discover_entry_points", "entry_point_distribution",
    "entry_point_ids", "HEAVY_MODULES", "imported_heavy_modules", "heavy_import_warning", "describe_unknown_hook",
]

#: packages a plugin should not import merely to register (it names lazy factories instead).
HEAVY_MODULES = ("torch", "diffusers", "timm", "mamba_ssm", "transformers", "xformers", "triton")


class CanvasPluginManager(pluggy.PluginManager):
    """A pluggy manager that also takes a plugin's *unmarked* function when its name is exactly
    that of a canvas hook (for plugin modules that could not import the ``hookimpl`` marker)."""

    def parse_hookimpl_opts(self, plugin: Any, name: str):  # type: ignore[override]
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name in hookspecs.HOOK_REGISTRY:
            method = getattr(plugin, name, None)
            if inspect.isroutine(method):
                opts = {"wrapper": False, "hookwrapper": False, "optionalhook": False,
                        "tryfirst": False, "trylast": False, "specname": None}
        return opts


def new_plugin_manager() -> CanvasPluginManager:
    """A fresh ``PluginManager("canvas")`` that knows the canvas hook specifications."""
    pm = CanvasPluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


def entry_point_distribution(ep: Any) -> Tuple[Optional[str], str]:
    """``(distribution name or None, version or "")`` of the package that declares ``ep``."""
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


def entry_point_ids(ep: Any) -> Set[str]:
    """The normalised names an allow- or block-list may use for ``ep`` (its own, its package's)."""
    ids = {normalize_dist(ep.name), normalize_dist(entry_point_distribution(ep)[0] or "")}
    ids.discard("")
    return ids


def discover_entry_points(source: Optional[Callable[[], Iterable[Any]]] = None) -> List[Any]:
    """Entry points of group ``canvas`` (or those ``source()`` returns), without repeats, in a
    stable order (by entry-point name, then distribution)."""
    if source is not None:
        eps = list(source())
    else:
        from importlib.metadata import entry_points

        eps = list(entry_points(group=hookspecs.ENTRY_POINT_GROUP))
    seen, out = set(), []
    for ep in eps:
        key = (ep.name, ep.value, normalize_dist(entry_point_distribution(ep)[0] or ""))
        if key not in seen:
            seen.add(key)
            out.append(ep)
    return sorted(out, key=lambda e: (e.name, entry_point_distribution(e)[0] or ""))


def imported_heavy_modules() -> Set[str]:
    """Which of :data:`HEAVY_MODULES` are imported by now."""
    return {m for m in HEAVY_MODULES if m in sys.modules}


def heavy_import_warning(before: Set[str]) -> Optional[str]:
    """The warning for a plugin whose loading imported heavy packages not imported ``before``."""
    heavy = sorted(imported_heavy_modules() - before)
    if not heavy:
        return None
    return (f"loading it imported {', '.join(heavy)} while registering; give factories as lazy "
            "'package.module:Object' strings (and import heavy packages inside those modules) so "
            "that registering and listing plugins stay cheap")


def describe_unknown_hook(name: str) -> str:
    """``'canvas_register_atention' (did you mean 'canvas_register_attention'?)``."""
    near = closest(name, hookspecs.HOOK_NAMES)
    return repr(name) + (f" (did you mean {near!r}?)" if near else "")
