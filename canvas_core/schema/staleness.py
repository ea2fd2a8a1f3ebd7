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
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from canvas_core.errors import SchemaError
from canvas_core.schema.layout import CanvasLayout

__all__ = ["check_unchanged", "check_unchanged_traced", "layout_stamp"]


def layout_stamp(layout: Any) -> Optional[Tuple[int, Tuple[Any, ...]]]:
    """``(layout.revision, its geometry)`` for a module built from ``layout`` to record (None for
    a layout that is not a :class:`CanvasLayout`, e.g. canvas-engineering's).

    Call it once per build, before the module reads the layout: it compares every region with
    the checked one (O(regions)), so a region replaced through ``dict.__setitem__`` is checked
    and counted here.  The per-use :func:`check_unchanged` stays O(1) and cannot see such a
    replacement made after the build until something queries the layout (see the module notes)."""
    if not isinstance(layout, CanvasLayout):
        return None
    return layout._stamp()


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
    """:func:`check_unchanged` for code that ``torch.compile`` traces: the layout's ``T``,
    ``spatial_shape``, regions and ``d_model`` are compared with the recorded ones directly, without
    the revision (which reads ``t_current``: a guard on it would recompile on every change of it).
    Dynamo guards on what it read here, so a change of the layout after compiling retraces, and
    the retrace refuses.  A stamp without the recorded geometry is not checked."""
    if not isinstance(stamp, tuple) or not isinstance(layout, CanvasLayout):
        return
    if (layout.T, layout.spatial_shape, tuple(layout.regions.items()), layout.d_model) != stamp[1]:
        raise _changed(owner, "seen while torch.compile traced it")


def _changed(owner: str, detail: str) -> SchemaError:
    return SchemaError(
        f"{owner} was built from this CanvasLayout before it was changed (its regions, T, "
        f"spatial_shape or d_model; {detail}), so the region "
        f"indices it holds are out of date; build the {owner} again from the changed layout")
