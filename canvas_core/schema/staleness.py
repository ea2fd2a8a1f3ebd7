"""Modules built from a :class:`~canvas_core.schema.layout.CanvasLayout` against later changes of it.

A canvas or an attention layer copies region indices and tables out of its layout when it is
built.  It records :func:`layout_stamp` then and calls :func:`check_unchanged` before use, so a
layout whose regions or geometry changed since is refused by name instead of being run on the
old indices.

The limit: a region *replaced* by ``dict.__setitem__(layout.regions, name, spec)`` (bypassing
the region dict's own ``__setitem__``) keeps the dict's change count and length, so the O(1)
check a module runs before every use cannot see it.  It is seen, checked and counted by the
next :meth:`~CanvasLayout.region_spec` (or ``region_runs`` / ``region_indices``) of that region
and by the next :func:`layout_stamp` (every region compared, once per build); from then on
modules built earlier are refused as for any other change.  Write ``layout.regions[name] = spec``.
Under ``torch.compile`` (:func:`check_unchanged_traced`) an entry *added or removed* that way is
not seen either until such a query counts it (the eager check sees it by the dict's length): the
traced check reads neither the regions dict's values nor its length, since Dynamo guards every
key of a dict whose length it reads (one guard per region on every compiled call).

Topologies likewise: a layer lowers ``topology.connections`` into its plan when it is built, records
:func:`topology_stamp` and calls :func:`check_topology_unchanged` (or ``..._traced``) before use.
The list counts its changes (:class:`~canvas_core.schema._connection_list.ConnectionList`); the
same limit: an entry replaced by ``list.__setitem__(topology.connections, i, c)`` is not seen (one
added or removed that way is, by the list's length).  ``Connection`` and ``MaskSpec`` are frozen;
an edit of one through ``object.__setattr__`` is not seen either.  A list written into the
topology's ``__dict__`` (behind its ``__setattr__``) is seen: the checks read the list the
topology holds now.  A topology of another kind (canvas-engineering's, or any object with
``connections`` that ``lower`` accepts) does not count its changes: its stamp is a snapshot of
what lowering reads of each connection, compared in full on every use (O(connections); under
``torch.compile`` a guard per connection field).
"""

from __future__ import annotations

from collections.abc import Mapping, Set as AbstractSet
from enum import Enum
from typing import Any, Optional, Tuple

from canvas_core.errors import SchemaError
from canvas_core.schema._connection_list import ConnectionList
from canvas_core.schema._region_dict import change_counts
from canvas_core.schema.layout import _GEOMETRY, _VERSION, CanvasLayout
from canvas_core.schema.topology import CanvasTopology, connection_list

__all__ = ["check_unchanged", "check_unchanged_traced", "layout_stamp", "topology_stamp",
           "check_topology_unchanged", "check_topology_unchanged_traced", "ConnectionsSnapshot"]


def layout_stamp(layout: Any) -> Optional[Tuple[int, Tuple[Any, ...]]]:
    """``(layout.revision, its geometry)`` for a module built from ``layout`` to record (None for
    a layout that is not a :class:`CanvasLayout`, e.g. canvas-engineering's).

    Call it once per build, before the module reads the layout: it compares every region with
    the checked one (O(regions)), so a region replaced through ``dict.__setitem__`` is checked
    and counted here.  The per-use :func:`check_unchanged` stays O(1) and cannot see such a
    replacement made after the build until something queries the layout (see the module notes)."""
    if not isinstance(layout, CanvasLayout):
        return None
    stamp = layout._stamp()  # the layout is as its last check left it now
    if layout._traced is None:  # e.g. unpickled from an older version: link what the traced check reads
        object.__setattr__(layout, "_traced", change_counts(layout.regions))
    return stamp


def check_unchanged(layout: Any, stamp: Any, owner: str) -> None:
    """Refuse to use a module built from ``layout`` once the layout has changed.

    A module (a canvas, an attention plan) copies region indices out of the layout when it is
    built; after a change of the regions or the geometry those copies describe the old layout,
    so using them would silently read and write the wrong positions.  ``stamp`` is what
    :func:`layout_stamp` gave at build time (or just ``layout.revision`` then; None: nothing to
    compare).  O(1) while the revision is the recorded one; a layout changed and changed back to
    the recorded geometry is accepted (compared in full, only then).
    """
    if stamp is None or not isinstance(layout, CanvasLayout):
        return
    revision, geometry = stamp if isinstance(stamp, tuple) else (stamp, None)
    now = layout.revision
    if now != revision and (geometry is None or layout._content != geometry):  # _content: as of `now`
        raise _changed(owner, f"layout revision {revision} -> {now}")


def check_unchanged_traced(layout: Any, stamp: Any, owner: str) -> None:
    """:func:`check_unchanged` for code that ``torch.compile`` traces, without reading ``t_current``
    (a guard on it would recompile on every change of it).  While the layout's last counted
    revision is the recorded one and its regions and geometry are as that check left them (the
    regions dict's change count, ``T``, ``spatial_shape``, ``d_model``, ...: O(1) values; a dict
    assigned to ``layout.regions`` clears what is read), nothing is compared further, so Dynamo
    guards a constant number of values whatever the number of regions.  A change of one retraces,
    and the retrace compares the regions in full and refuses a real change.  A stamp without the
    recorded geometry is not checked."""
    if not isinstance(stamp, tuple) or len(stamp) < 2 or not isinstance(layout, CanvasLayout):
        return
    if layout._revision == stamp[0] and _as_checked_traced(layout):
        return
    if (layout.T, layout.spatial_shape, tuple(layout.regions.items()), layout.d_model) != stamp[1]:
        raise _changed(owner, "seen while torch.compile traced it")


def _as_checked_traced(layout: CanvasLayout) -> bool:
    """Whether the layout's regions and geometry are as its last check left them, read from O(1)
    values that are neither the regions dict's contents or length (Dynamo guards every key of a
    dict it reads either of) nor ``t_current``: the dict's own ``__dict__``, where it counts its changes
    (``_traced``, linked by the check and by unpickling or copying; None after ``layout.regions``
    was replaced)."""
    counts, seen = layout._traced, layout.__dict__.get("_validated")
    return counts is not None and seen is not None and counts.get("version") == seen[_VERSION] and \
        seen[_GEOMETRY:] == (layout.T, layout.spatial_shape, layout.allow_overlap, layout.d_model, layout.H, layout.W)


def _changed(owner: str, detail: str) -> SchemaError:
    return SchemaError(
        f"{owner} was built from this CanvasLayout before it was changed (its regions, T, "
        f"spatial_shape or d_model; {detail}), so the region "
        f"indices it holds are out of date; build the {owner} again from the changed layout")


#: what lowering reads of a connection: a foreign topology's stamp keeps these values
_FIELDS = ("src", "dst", "weight", "t_src", "t_dst", "fn", "operator", "write_mode", "temporal_fill",
           "interpolation_order", "mask")


class ConnectionsSnapshot(tuple):
    """The stamp of a topology that is not a :class:`CanvasTopology` (canvas-engineering's, or any
    object with ``connections``): per connection, the values lowering reads (``_FIELDS``).  Such
    a list does not count its changes, so the checks compare the whole snapshot on every use."""

    __slots__ = ()


def topology_stamp(topology: Any) -> Any:
    """What a module built from ``topology`` records: ``(version, length, connections)`` of a
    :class:`CanvasTopology`'s list, or a :class:`ConnectionsSnapshot` of any other object with
    ``connections`` (None without them).  Call it once per build: O(connections).  Connections
    put into a ``CanvasTopology`` behind its ``__setattr__`` (``vars(t)["connections"] = ...``)
    are copied into a counting list here, refused as by the constructor if unordered."""
    if not isinstance(topology, CanvasTopology):
        snap = _snapshot(topology)
        return None if snap is None else ConnectionsSnapshot(snap)
    conns = vars(topology).get("connections")
    if type(conns) is not ConnectionList:  # e.g. unpickled from an older version: a counting copy
        conns = connection_list(conns)
        object.__setattr__(topology, "connections", conns)
    return conns.version, len(conns), tuple(conns)


def check_topology_unchanged(topology: Any, stamp: Any, owner: str, fix: Optional[str] = None) -> None:
    """Refuse to use a module built from ``topology`` once its connections have changed.

    ``stamp``: what :func:`topology_stamp` gave at build time (None: nothing to compare).  For a
    ``CanvasTopology`` O(1) while the list's version and length are the recorded ones;
    connections changed and changed back are accepted (compared in full, only then).  Another
    topology's snapshot is compared in full (O(connections)).  ``fix``: what to do instead of the
    default "build the <owner> again"."""
    if not _counted(topology, stamp, owner, fix):
        return
    conns = topology.connections
    if getattr(conns, "version", None) == stamp[0] and len(conns) == stamp[1]:
        return
    if not _same(conns, stamp[2]):
        raise _topology_changed(topology, owner, fix)


def check_topology_unchanged_traced(topology: Any, stamp: Any, owner: str, fix: Optional[str] = None) -> None:
    """:func:`check_topology_unchanged` for code that ``torch.compile`` traces.  For a
    ``CanvasTopology`` it reads the list held in the topology's ``__dict__`` (so a list written
    there behind ``__setattr__`` is the one checked) and the version in the list's ``__dict__``,
    not the entries: Dynamo guards the list's type and length and the version, a constant number
    of values whatever the number of connections.  A change retraces (once per change, an undo
    included), and the retrace compares the connections in full and refuses a real change.
    Another topology's snapshot is compared in full: one guard per connection field."""
    if not _counted(topology, stamp, owner, fix):
        return
    conns = vars(topology).get("connections")
    if type(conns) is ConnectionList and vars(conns).get("version") == stamp[0]:
        return
    if not _same(conns, stamp[2]):
        raise _topology_changed(topology, owner, fix)


def _counted(topology: Any, stamp: Any, owner: str, fix: Optional[str]) -> bool:
    """What both checks do first: a foreign topology's snapshot is compared here (in full); True
    when ``stamp`` is a ``CanvasTopology``'s ``(version, length, connections)`` left to compare."""
    if isinstance(stamp, ConnectionsSnapshot):
        if _snapshot_changed(topology, stamp):
            raise _topology_changed(topology, owner, fix)
        return False
    return isinstance(stamp, tuple) and len(stamp) == 3 and isinstance(topology, CanvasTopology)


def _same(conns: Any, recorded: Tuple[Any, ...]) -> bool:
    if isinstance(conns, (AbstractSet, Mapping, str, bytes)):  # no order, or not connections
        return False
    try:
        return tuple(conns) == recorded
    except TypeError:  # not iterable any more
        return False


def _snapshot(topology: Any) -> Optional[Tuple[Tuple[Any, ...], ...]]:
    """Per connection of a foreign topology, the values of ``_FIELDS`` (None: no connections)."""
    conns = getattr(topology, "connections", None)
    if conns is None or isinstance(conns, (AbstractSet, Mapping, str, bytes)):
        return None
    try:
        return tuple(tuple(_value(getattr(c, f, None)) for f in _FIELDS) for c in conns)
    except TypeError:  # not iterable: lowering refuses it
        return None


def _value(v: Any) -> Any:
    return v.value if isinstance(v, Enum) else v  # canvas-engineering's TemporalFill by its value


def _snapshot_changed(topology: Any, stamp: "ConnectionsSnapshot") -> bool:
    """Whether a foreign topology's connections differ from its snapshot ``stamp``: each value
    the same object or equal (a comparison that fails, e.g. of arrays in a mask, counts as a change)."""
    now = _snapshot(topology)
    if now is None or len(now) != len(stamp):
        return True
    for conn_now, conn_then in zip(now, stamp):
        for a, b in zip(conn_now, conn_then):
            if a is not b and not _equal(a, b):
                return True
    return False


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # e.g. an ambiguous comparison of arrays
        return False


def _topology_changed(topology: Any, owner: str, fix: Optional[str]) -> SchemaError:
    return SchemaError(
        f"{owner} was built from this {type(topology).__name__} before its connections were changed (added, "
        "removed, replaced or reordered), so the execution plan it holds is out of date and would run "
        f"the old connections; {fix or f'build the {owner} again from the changed topology'}")
