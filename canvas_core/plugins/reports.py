"""What ``canvas plugins`` reports about a host, read from one :class:`HostSnapshot`: the plugin
records, every registry's state and the loading controls, all taken under the host's lock at
one moment, so that rows, conflicts, shadowed names and registries always agree."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, NamedTuple

from canvas_core.plugins.loading import PluginRecord
from canvas_core.plugins.registry import RegistryState
from canvas_core.plugins.spec import RuntimeContext

if TYPE_CHECKING:  # pragma: no cover
    from canvas_core.plugins.host import PluginHost


class HostSnapshot(NamedTuple):
    """A host's records, registry states (kind -> :class:`RegistryState`) and settings of one moment;
    the records are copies whose ``conflicts`` are read off the snapshot's registry states, so a
    plugin loaded or failed later does not change a snapshot already taken."""

    records: List[PluginRecord]
    states: Dict[str, RegistryState]
    settings: Dict[str, Any]


def take(host: "PluginHost") -> HostSnapshot:
    """Load ``host`` if needed, then read everything a report needs under its lock (writers hold it)."""
    host.ensure_loaded()
    with host._locked():
        snap = HostSnapshot([_copy(r) for r in host.records.values()],
                            {kind: reg.snapshot() for kind, reg in host.registries.items()}, dict(host.settings))
    found = clashes(snap.states)
    for rec in snap.records:
        rec.clash_source = lambda name, found=found: found.get(name, [])
    return snap


def _copy(rec: PluginRecord) -> PluginRecord:
    """``rec`` as it is now, detached from its host and from later changes to it."""
    return replace(rec, hooks=list(rec.hooks), warnings=list(rec.warnings), clash_source=None,
                   attempted={k: list(v) for k, v in rec.attempted.items()})


def clashes(states: Mapping[str, RegistryState]) -> Dict[str, List[str]]:
    """plugin -> its refused registrations whose name still clashes, over every registry's state."""
    out: Dict[str, List[str]] = {}
    for st in states.values():
        for plugin, msgs in st.clashes_by_plugin().items():
            out.setdefault(plugin, []).extend(msgs)
    return out


def registered_by(states: Mapping[str, RegistryState], plugin: str) -> Dict[str, List[str]]:
    """kind -> sorted names ``plugin`` registered there, overridden registrations included."""
    out = {kind: sorted({s.name for stack in st.stacks.values() for s in stack if s.plugin == plugin})
           for kind, st in states.items()}
    return {kind: names for kind, names in out.items() if names}


def plugin_rows(snap: HostSnapshot) -> List[Dict[str, Any]]:
    """One ``PluginRecord.to_dict`` per plugin, its conflicts (read off ``snap`` by :func:`take`) and
    names read off ``snap``."""
    return [rec.to_dict(registered_by(snap.states, rec.name), rec.conflicts) for rec in snap.records]


def registry_rows(snap: HostSnapshot, ctx: Any = None) -> Dict[str, List[Dict[str, Any]]]:
    """Registry kind -> one ``Spec.to_dict(ctx)`` per name, plus ``conflict`` (two plugins provide
    it: unavailable), ``shadowed`` (plugins' refused registrations of a builtin name) and
    ``broken`` (a lazy factory module that cannot be found: unavailable).  The specs'
    availability checks run here, outside the host's lock."""
    ctx = RuntimeContext.coerce(ctx)
    out: Dict[str, List[Dict[str, Any]]] = {}
    for kind, st in snap.states.items():
        out[kind], conflicts, shadowed = [], st.conflicts(), st.shadowed()
        for spec in st.specs():
            d = spec.to_dict(ctx)
            if spec.name in conflicts:
                d.update(available=False, reasons=[conflicts[spec.name]] + d["reasons"], conflict=conflicts[spec.name])
            if spec.name in shadowed:
                d["shadowed"] = shadowed[spec.name]
            problem = spec.factory_problem()  # a misspelt lazy factory: broken, found without importing
            if problem:
                d.update(available=False, broken=problem, reasons=d["reasons"] + [problem])
            out[kind].append(d)
    return out
