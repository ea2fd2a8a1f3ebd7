"""Which installed plugins the host may load: the environment controls and what they decide.

Three variables are read when the host loads (arguments of :class:`~canvas_core.plugins.host.PluginHost`
take their place when given):

* ``CANVAS_DISABLE_PLUGIN_AUTOLOAD=1``: import no entry point (the core's builtins still register);
* ``CANVAS_PLUGINS=a,b``: import only these entry-point or distribution names;
* ``CANVAS_BLOCK_PLUGINS=x,y``: never import these.

Names are compared after :func:`~canvas_core.plugins.hints.normalize_dist`, so ``Canvas_Plugin-Mamba``
and ``canvas-plugin-mamba`` are the same plugin.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, List, Mapping, Optional

from canvas_core.errors import PluginError
from canvas_core.plugins.hints import normalize_dist
from canvas_core.plugins.registry import closest

__all__ = [
    "ENV_DISABLE", "ENV_ALLOW", "ENV_BLOCK", "LoadSettings", "read_settings", "env_flag", "name_list",
    "warn_unknown_names",
]

ENV_DISABLE = "CANVAS_DISABLE_PLUGIN_AUTOLOAD"
ENV_ALLOW = "CANVAS_PLUGINS"
ENV_BLOCK = "CANVAS_BLOCK_PLUGINS"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def env_flag(env: Mapping[str, str], var: str) -> bool:
    """Read ``var`` from ``env`` as a yes/no switch; any other spelling is a :class:`PluginError`."""
    raw = env.get(var)
    word = str(raw or "").strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise PluginError(
        f"environment variable {var}={raw!r} is not a boolean; set it to 1 (or true/yes/on) to enable "
        "it, or 0 / unset it to disable it")


def name_list(value: Any) -> Optional[List[str]]:
    """Turn ``"a, b;c"`` or ``["a", "b"]`` into normalised names; nothing given gives None."""
    if value is None:
        return None
    items = value.replace(";", ",").split(",") if isinstance(value, str) else list(value)
    names = [normalize_dist(x.strip()) for x in items if str(x).strip()]
    return names or None


@dataclass
class LoadSettings:
    """The controls in force for one load: ``allow`` None means every plugin is allowed."""

    autoload: bool = True
    allow: Optional[List[str]] = None
    block: List[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"autoload": self.autoload, "allow": self.allow, "block": list(self.block)}

    def refusal(self, ids: Iterable[str]) -> Optional[tuple]:
        """``(status, reason)`` when a plugin known by ``ids`` (normalised entry-point and
        distribution names) must stay unloaded, else None."""
        ids = set(ids)
        if not self.autoload:
            return "disabled", f"{ENV_DISABLE} is set"
        if ids & set(self.block):
            return "blocked", f"blocked by {ENV_BLOCK}"
        if self.allow is not None and not ids & set(self.allow):
            return "blocked", f"not in the allow-list {ENV_ALLOW}"
        return None


def read_settings(env: Mapping[str, str], *, autoload: Optional[bool] = None,
                  allow: Optional[Iterable[str]] = None, block: Optional[Iterable[str]] = None) -> LoadSettings:
    """Combine explicit arguments (they win when not None) with the environment ``env``."""
    auto = (not env_flag(env, ENV_DISABLE)) if autoload is None else bool(autoload)
    allowed = name_list(env.get(ENV_ALLOW)) if allow is None else name_list(allow)
    blocked = name_list(env.get(ENV_BLOCK)) if block is None else name_list(block)
    return LoadSettings(autoload=auto, allow=allowed, block=blocked or [])


def warn_unknown_names(settings: LoadSettings, installed: Iterable[str]) -> None:
    """Warn when the allow- or block-list mentions a name no installed plugin has (a typo, most
    likely); ``installed`` holds the normalised entry-point and distribution names seen."""
    known = {n for n in installed if n}
    for var, names in ((ENV_ALLOW, settings.allow), (ENV_BLOCK, settings.block)):
        unknown = [n for n in (names or []) if n not in known]
        if not unknown:
            continue
        near = {n: closest(n, known) for n in unknown}
        hint = "".join(f" ({n!r}: did you mean {c!r}?)" for n, c in near.items() if c)
        # blamed on the variable itself, so the warning shows no source line of ours
        warnings.warn_explicit(
            f"{var} names {', '.join(repr(n) for n in unknown)}, which is no installed canvas "
            f"plugin{hint}. Installed: {', '.join(sorted(known)) or 'none'}",
            UserWarning, filename=f"${var}", lineno=0, module="canvas_core.plugins")
