"""Attention mask specifications of a connection, and exact rectangle covers.

Pure Python at import (numpy / torch are imported lazily inside functions).  This module is the
public path; the code is in :mod:`~canvas_core.schema.mask_spec` (:class:`MaskSpec`),
:mod:`~canvas_core.schema.rects` (:class:`Rect`, :func:`rect_cover`) and
:mod:`~canvas_core.schema.mask_pairs` (the two lowering contracts below).

``MaskSpec(kind=...)`` restricts which position pairs of a connection ``src -> dst`` link
(always intersected with the connection's temporal links):

* ``"full"`` (default): every src position may attend to every dst position.
* ``"tile"``: the canvas spatial grid is cut into tiles of ``tile_shape`` (one size per spatial
  dim; ``tile_h``/``tile_w`` are the 2-d shorthand) anchored at the **src region's spatial corner**
  ``(o0, o1, ...)`` (as canvas-engineering does); tile of a position (src or dst) =
  ``((s0 - o0) // tile0, (s1 - o1) // tile1, ...)``.  Each src tile (its cell clipped to the src
  region's box) links to the dst positions inside that clipped cell, every frame (frames are chosen
  by the temporal links); a src tile whose clipped cell holds no dst position links to *every* dst
  position (canvas-engineering's rule: no src position is left without keys).  With no spatial dims
  a tile mask is the full mask.
* ``"sparse"``: ``pattern`` is an explicit binary matrix of shape ``(S_src, S_dst)`` where
  ``S_src`` / ``S_dst`` are the *per-frame spatial volumes* of the src / dst regions; row ``i``
  is the src region's i-th spatial position (row-major over the region's own spatial box), column
  ``j`` likewise for dst.  ``pattern[i][j]`` true = src spatial position i may attend to dst
  spatial position j (at every frame pair the temporal links allow).  The pattern is covered
  exactly by :func:`rect_cover`; each rectangle becomes one block of the block-sparse structure.

Contracts for the lowering:

* :func:`mask_to_index_pairs` ``(mask_spec, layout, src, dst) -> [(src_indices, dst_indices)]``:
  canonical flat indices over **all frames** of each region; each pair links every listed src
  index to every listed dst index; pairs never overlap (the union of their products is exactly the
  allowed set).  ``"full"`` gives one pair with all indices.
* :func:`mask_rectangles` ``(mask_spec, layout, src, dst) -> [(Rect src_box, Rect dst_box)]``:
  the same set as boxes in the layout's ``(T, *spatial)`` coordinates (half-open ranges; the time
  range is the region's frames ``(t0, t1)``); the product of each box pair is allowed, pairs are
  disjoint.  ``"full"`` gives the two region boxes.
"""

from __future__ import annotations

from canvas_core.schema.mask_pairs import mask_rectangles, mask_to_index_pairs
from canvas_core.schema.mask_spec import MaskSpec
from canvas_core.schema.rects import Rect, rect_cover

__all__ = ["MaskSpec", "Rect", "rect_cover", "mask_to_index_pairs", "mask_rectangles"]
