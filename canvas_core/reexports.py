"""Names supplied by optional plugin distributions (``canvas_core.MambaAttention``,
``canvas_core.CogVideoXAttention``), found through the attention registry.  A missing plugin
raises :class:`UnknownNameError` with the install hint; the error is also an ``AttributeError``,
so ``hasattr`` works."""

from __future__ import annotations

import functools
from typing import Any, Dict, Tuple

from canvas_core._lazy import lazy_exports
from canvas_core.errors import UnknownNameError

__all__: list = []  # nothing for `import *`: these are optional

#: exported name -> (attention type name, distribution providing it, class name in the plugin)
REEXPORTS: Dict[str, Tuple[str, str, str]] = {
    "MambaAttention": ("mamba", "canvas-plugin-mamba", "MambaAttention"),
    "CogVideoXAttention": ("cogvideox", "canvas-plugin-cogvideox", "CogVideoXAttention"),
}


class MissingPluginNameError(UnknownNameError, AttributeError):
    """A re-exported name whose plugin is not installed."""


def _from_plugin_module(dist: str, attr: str) -> Any:
    """``attr`` from the top-level object of a loaded plugin of distribution ``dist``, or None."""
    from canvas_core.plugins.hints import normalize_dist
    from canvas_core.plugins.host import get_host

    host = get_host()
    host.ensure_loaded()
    objects = [r.plugin for r in host.records.values() if normalize_dist(r.distribution) == normalize_dist(dist)]
    return next((v for v in (getattr(o, attr, None) for o in objects if o is not None) if v is not None), None)


def _reexport(name: str) -> Any:
    type_name, dist, cls_name = REEXPORTS[name]
    from canvas_core.plugins.host import get_host

    reg = get_host().registry("attention")
    if type_name in reg:
        return reg.get(type_name).load()
    value = _from_plugin_module(dist, cls_name)
    if value is not None:
        return value
    try:
        get_host().lookup("attention", type_name)  # PluginLoadError when its plugin failed to load
    except UnknownNameError as exc:
        raise MissingPluginNameError(
            f"{name} is provided by the optional distribution {dist} (attention type "
            f"{type_name!r}): {exc}") from None
    raise MissingPluginNameError(f"{name}: pip install {dist}")  # pragma: no cover


# looked up on every access (not cached): a plugin may be registered later
__getattr__, __dir__ = lazy_exports(__name__, {n: functools.partial(_reexport, n) for n in REEXPORTS})
