"""What the host tells people: the error for a name nobody provides, and the reports behind
``canvas plugins [--json]`` (:func:`plugin_report`, :func:`registry_report`).

Functions here read a :class:`~canvas_core.plugins.host.PluginHost` and change nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List

from canvas_core.errors import PluginLoadError
from canvas_core.plugins.context import RuntimeContext
from canvas_core.plugins.hints import install_hint, normalize_dist, provider_hint
from canvas_core.plugins.records import STATUS_BLOCKED, STATUS_DISABLED, STATUS_FAILED, STATUS_OK, PluginRecord
from canvas_core.plugins.registry import NOUNS, UnknownNameKeyError, closest
from canvas_core.plugins.settings import ENV_ALLOW, ENV_BLOCK, ENV_DISABLE

if TYPE_CHECKING:  # pragma: no cover
    from canvas_core.plugins.host import PluginHost

__all__ = ["missing_name_error", "registered_by", "plugin_report", "registry_report", "distribution_installed"]


def _attach(err: Exception, **attrs: Any) -> Exception:
    for k, v in attrs.items():
        setattr(err, k, v)
    return err


def _unloaded_provider_error(rec: PluginRecord, kind: str, name: Any, known: List[str]) -> Exception:
    """The error when the plugin that would provide ``name`` is installed but did not load."""
    noun = NOUNS[kind]
    if rec.status == STATUS_FAILED:
        err: Exception = PluginLoadError(
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
    return _attach(err, name=name, kind=kind, known=known, suggestion=None, distribution=rec.distribution,
                   plugin=rec.name)


def missing_name_error(host: "PluginHost", kind: str, name: Any) -> Exception:
    """The exception for looking up ``name`` in registry ``kind`` where nothing provides it.

    When an installed plugin that did not load (failed, blocked, disabled) would provide it, the
    error names that plugin and the fix.  Otherwise it lists the known names, the closest one,
    and the distribution that provides the name when the hints know it.  The exception carries
    ``name``, ``kind``, ``known``, ``suggestion``, ``distribution`` and ``plugin`` attributes.
    """
    noun = NOUNS[kind]
    known = host.registries[kind].names()
    dist_hint = provider_hint(kind, str(name))
    for rec in host.records.values():
        if rec.status == STATUS_OK:
            continue
        by_name = normalize_dist(rec.name.split("@", 1)[0]) == normalize_dist(str(name))
        by_dist = dist_hint is not None and normalize_dist(rec.distribution) == normalize_dist(dist_hint)
        by_attempt = str(name) in rec.attempted.get(kind, ())
        if by_name or by_dist or by_attempt:
            return _unloaded_provider_error(rec, kind, name, known)
    near = closest(str(name), known)
    msg = f"Unknown {noun}: {name!r}."  # canvas-engineering's phrase
    if dist_hint is not None:
        if distribution_installed(host, dist_hint):
            msg += (f" The distribution {dist_hint} is installed but does not register it; "
                    f"upgrade it (pip install -U {dist_hint}) or check `canvas plugins`.")
        else:
            msg += (f" It is provided by the distribution {dist_hint}, which is not installed: "
                    f"{install_hint(dist_hint)}.")
    if near is not None:
        msg += f" Did you mean {near!r}?"
    msg += f" Known {noun}s: {', '.join(known) or '(none)'}."
    failed = [r for r in host.records.values() if r.status == STATUS_FAILED]
    if failed:
        msg += " Note: " + "; ".join(f"{r.describe()} failed to load ({r.error})" for r in failed) + "."
    skipped: Dict[str, List[str]] = {}
    for r in host.records.values():
        if r.status in (STATUS_BLOCKED, STATUS_DISABLED):
            skipped.setdefault(r.error or r.status, []).append(r.name)
    if skipped:
        msg += (" Installed but not loaded, so their names are unknown here: "
                + "; ".join(f"{', '.join(ns)} ({why})" for why, ns in skipped.items()) + ".")
    return _attach(UnknownNameKeyError(msg), name=name, kind=kind, known=known, suggestion=near,
                   distribution=dist_hint, plugin=None)


def distribution_installed(host: "PluginHost", dist: str) -> bool:
    """Whether ``dist`` is installed: seen by the host, or (for a host reading the real entry
    points) known to ``importlib.metadata``."""
    want = normalize_dist(dist)
    if any(normalize_dist(r.distribution) == want for r in host.records.values()):
        return True
    if host.injected_entry_points:  # a test world: only what the host saw counts
        return False
    try:
        from importlib.metadata import distribution

        distribution(dist)
        return True
    except Exception:  # PackageNotFoundError, or broken metadata
        return False


def registered_by(host: "PluginHost", plugin: str) -> Dict[str, List[str]]:
    """Registry kind -> names ``plugin`` registered (overridden registrations included)."""
    out: Dict[str, List[str]] = {}
    for kind, reg in host.registries.items():
        names = reg.names_by_plugin(plugin)
        if names:
            out[kind] = names
    return out


def plugin_report(host: "PluginHost") -> List[Dict[str, Any]]:
    """One dict per plugin the host knows (see :meth:`PluginRecord.to_dict`)."""
    host.ensure_loaded()
    return [rec.to_dict(registered_by(host, rec.name)) for rec in host.records.values()]


def registry_report(host: "PluginHost", ctx: Any = None) -> Dict[str, List[Dict[str, Any]]]:
    """Registry kind -> one dict per registered name, with whether it can run in ``ctx``; a name
    two plugins fight over is reported unavailable with the clash as first reason."""
    host.ensure_loaded()
    ctx = RuntimeContext.coerce(ctx)
    out: Dict[str, List[Dict[str, Any]]] = {}
    for kind, reg in host.registries.items():
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
