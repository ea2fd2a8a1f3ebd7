"""Modules built from a :class:`~canvas_core.schema.layout.CanvasLayout` against later changes of it.

A canvas or an attention layer copies region indices and tables out of its layout when it is
built.  It records :func:`layout_stamp` then and calls :func:`check_unchanged` before use, so a
layout whose regions or geometry changed since is refused by name instead of being run on the
old indices.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from canvas_core.errors import SchemaError
from canvas_core.schema.layout import CanvasLayout

__all__ = ["check_unchanged", "layout_stamp"]


def _geometry(layout: CanvasLayout) -> Tuple[Any, ...]:
    """What a module built from ``layout`` copies out of it (read after ``layout.revision``, which
    checks the regions first)."""
    return (layout.T, layout.spatial_shape, tuple(layout.regions.items()), layout.d_model)


def layout_stamp(layout: Any) -> Optional[Tuple[int, Tuple[Any, ...]]]:
    """``(layout.revision, its geometry)`` for a module built from ``layout`` to record (None for
    a layout that is not a :class:`CanvasLayout`, e.g. canvas-engineering's)."""
    if not isinstance(layout, CanvasLayout):
        return None
    return layout.revision, _geometry(layout)


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
    if now != revision and (geometry is None or _geometry(layout) != geometry):
        raise SchemaError(
            f"{owner} was built from this CanvasLayout before it was changed (its regions, T, "
            f"spatial_shape or d_model; layout revision {revision} -> {now}), so the region "
            f"indices it holds are out of date; build the {owner} again from the changed layout")
