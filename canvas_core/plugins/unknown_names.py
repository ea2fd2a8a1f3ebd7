"""The error for a registry name nobody provides: when an installed plugin that would provide it
did not load (failed, blocked, disabled), that plugin's state and the fix; otherwise the known
names, the closest one, the distribution to install and the plugins that did not load.  The
host (:meth:`canvas_core.plugins.host.PluginHost.missing_name_error`) gathers the records and
names under its lock and builds the error here."""

from __future__ import annotations

from typing import Any, Callable, Dict, List

from canvas_core.errors import PluginLoadError, closest
from canvas_core.plugins.hints import normalize_dist, provider_hint
from canvas_core.plugins.loading import (
    ENV_ALLOW, ENV_BLOCK, ENV_DISABLE, STATUS_BLOCKED, STATUS_DISABLED, STATUS_FAILED, STATUS_OK, PluginRecord,
)
from canvas_core.plugins.registry import NOUNS, UnknownNameKeyError

__all__ = ["unknown_name_error"]


def unknown_name_error(kind: str, name: Any, records: List[PluginRecord], known: List[str],
                       installed: Callable[[str], bool]) -> Exception:
    """The error for ``name`` missing from registry ``kind``, given the host's ``records`` and the
    ``known`` names of one moment; ``installed(distribution)`` tells whether a distribution is
    installed.  See :meth:`~canvas_core.plugins.host.PluginHost.missing_name_error`."""
    noun = NOUNS[kind]
    dist_hint = provider_hint(kind, str(name))
    for rec in records:
        if rec.status != STATUS_OK and (
                normalize_dist(rec.name.split("@", 1)[0]) == normalize_dist(str(name))
                or (dist_hint is not None and normalize_dist(rec.distribution) == normalize_dist(dist_hint))
                or str(name) in rec.attempted.get(kind, ())):
            return _attach(_unloaded_provider_error(rec, noun, name), name=name, kind=kind, known=known,
                           suggestion=None, distribution=rec.distribution, plugin=rec.name)
    near = closest(str(name), known)
    msg = f"Unknown {noun}: {name!r}."  # canvas-engineering's phrase
    if dist_hint is not None:
        if installed(dist_hint):
            msg += (f" The distribution {dist_hint} is installed but does not register it; "
                    f"upgrade it (pip install -U {dist_hint}) or check `canvas plugins`.")
        else:
            msg += (f" It is provided by the distribution {dist_hint}, which is not installed: "
                    f"pip install {dist_hint}.")
    if near is not None:
        msg += f" Did you mean {near!r}?"
    msg += f" Known {noun}s: {', '.join(known) or '(none)'}."
    failed = "; ".join(f"{r.describe()} failed to load ({r.error})" for r in records
                       if r.status == STATUS_FAILED)
    msg += f" Note: {failed}." if failed else ""
    skipped: Dict[str, List[str]] = {}
    for r in (r for r in records if r.status in (STATUS_BLOCKED, STATUS_DISABLED)):
        skipped.setdefault(r.error or r.status, []).append(r.name)
    if skipped:
        msg += (" Installed but not loaded, so their names are unknown here: "
                + "; ".join(f"{', '.join(ns)} ({why})" for why, ns in skipped.items()) + ".")
    return _attach(UnknownNameKeyError(msg), name=name, kind=kind, known=known, suggestion=near,
                   distribution=dist_hint, plugin=None)


def _attach(err: Exception, **attrs: Any) -> Exception:
    err.__dict__.update(attrs)
    return err


def _unloaded_provider_error(rec: PluginRecord, noun: str, name: Any) -> Exception:
    """The error when the plugin that would provide ``name`` is installed but did not load."""
    if rec.status == STATUS_FAILED:
        return PluginLoadError(
            f"{noun} {name!r} would be provided by {rec.describe()}, which failed to load: "
            f"{rec.error}. Fix or reinstall {rec.distribution} (pip install --force-reinstall "
            f"{rec.distribution}), or see `canvas plugins` for details.")
    fix = (f"unset {ENV_DISABLE} to load installed plugins" if rec.status == STATUS_DISABLED else
           f"remove it from {ENV_BLOCK}" if ENV_BLOCK in (rec.error or "") else f"add {rec.name!r} to {ENV_ALLOW}")
    return UnknownNameKeyError(f"unknown {noun} {name!r}: it is provided by {rec.describe()}, which is "
                               f"installed but not loaded ({rec.error}); {fix}.")
