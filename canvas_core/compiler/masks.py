"""The block-sparse mask of a topology: which tiles of the packed attention matrix are full,
partial or empty, as the index arrays FlexAttention-style kernels take.

Numpy only.  The dense ``(N, N)`` mask is a tensor, so it is built in the runtime
(:func:`canvas_core.runtime.plan_tensors.attention_mask`, what ``CanvasTopology.to_attention_mask``
returns).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from canvas_core.compiler.layout_match import describe_differences
from canvas_core.compiler.lowering import lower
from canvas_core.compiler.plan import BlockLayout, ExecutionPlan
from canvas_core.errors import CanvasTypeError, SchemaError
from canvas_core.schema.limits import check_bytes, limit
from canvas_core.schema.staleness import check_topology_unchanged, check_unchanged, layout_stamp

__all__ = ["block_mask", "BlockMask", "check_plan_current"]

#: bytes a tile of a BlockMask holds: its state (int8) and pair count (int64) in the BlockLayout,
#: and its entries of kv_indices and full_kv_indices (int64 each)
TILE_BYTES = 25


@dataclass
class BlockMask:
    """Block-sparse structure of a topology's mask, in the plan's packed order.

    Attributes:
        plan: the :class:`ExecutionPlan` (``plan.perm`` maps packed -> canonical positions).
        layout: the :class:`BlockLayout` (tile states and counts).
        block_size: tile edge.
        kv_num_blocks: ``(n_q_blocks,)`` int64, number of non-empty key blocks (partial and
            full) per query block.
        kv_indices: ``(n_q_blocks, n_k_blocks)`` int64, the non-empty key blocks of each query
            block first (ascending), then padding with its first block repeated.
        full_kv_num_blocks / full_kv_indices: the same for the full tiles only (every pair
            linked with one weight: no per-pair mask needed, only a constant bias).

    FlexAttention's ``BlockMask.from_kv_blocks`` takes the *partial* tiles as ``kv_*`` and the
    full ones as ``full_kv_*`` (a tile in both would be computed twice): pass
    :attr:`partial_kv_num_blocks` / :attr:`partial_kv_indices` with the ``full_kv_*`` ones.
    """

    plan: ExecutionPlan
    layout: BlockLayout
    block_size: int
    kv_num_blocks: np.ndarray
    kv_indices: np.ndarray
    full_kv_num_blocks: np.ndarray
    full_kv_indices: np.ndarray

    @property
    def partial_kv_num_blocks(self) -> np.ndarray:
        """``(n_q_blocks,)`` int64: key blocks per query block that are linked only in part."""
        return _pack_rows(self.layout.state == BlockLayout.PARTIAL)[0]

    @property
    def partial_kv_indices(self) -> np.ndarray:
        """``(n_q_blocks, n_k_blocks)`` int64: the partial key blocks of each query block first
        (ascending), then padding (FlexAttention's ``kv_indices``)."""
        return _pack_rows(self.layout.state == BlockLayout.PARTIAL)[1]

    @property
    def shape(self):
        return (self.plan.n, self.plan.n)

    @property
    def density(self) -> float:
        return self.layout.density

    @property
    def perm(self) -> np.ndarray:
        return self.plan.perm

    def __repr__(self) -> str:
        return f"BlockMask(N={self.plan.n}, block_size={self.block_size}, {self.layout!r})"


def _pack_rows(sel: np.ndarray):
    nq, nk = sel.shape if sel.ndim == 2 else (0, 0)
    num = sel.sum(axis=1).astype(np.int64)
    # stable argsort puts the selected blocks first in ascending order
    order = np.argsort(~sel, axis=1, kind="stable").astype(np.int64)
    pad = np.arange(nk)[None, :] >= num[:, None]
    order = np.where(pad, order[:, :1] if nk else order, order)
    return num, order


def _check_tiles(n: int, block_size: Any) -> None:
    """Refuse (``SizeLimitError``) a tile grid whose arrays would exceed the byte limit
    (``CANVAS_MAX_BYTES``), naming the smallest ``block_size`` that fits: the tiles grow as
    ``(N / block_size)**2`` (block_size=1 at N = 65,536: 4.3e9 tiles, about 100 GiB)."""
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or int(block_size) < 1:
        return  # ExecutionPlan.block_layout names the bad value
    bs = int(block_size)
    nb = max(1, -(-n // bs))
    most = math.isqrt(limit("bytes") // TILE_BYTES)  # most tiles per side under the limit
    fix = (f"Use block_size >= {-(-n // most):,} ({most:,} blocks a side at most)" if most
           else "Use a larger block_size")
    check_bytes(TILE_BYTES * nb * nb, f"the block mask of block_size={bs} over N={n:,} positions ({nb:,} x {nb:,} "
                f"= {nb * nb:,} tiles, {TILE_BYTES} bytes a tile)", fix)


def check_plan_current(plan: ExecutionPlan, where: str, topology: Any = None, layout: Any = None) -> None:
    """Refuse (``SchemaError``) to build a mask from ``plan`` when it no longer describes what it
    is asked for: its layout or topology changed since it was lowered (the checks and messages
    the layers use, ``canvas_core.schema.staleness``), or ``topology`` / ``layout`` (None: not
    given) is another one than the plan was lowered from: a topology unequal to the plan's, a
    layout that lowers otherwise (:func:`~canvas_core.compiler.layout_match.layout_differences`,
    the comparison the layers use: fields that place no position, such as ``d_model`` or
    ``t_current``, may differ).  ``where`` names the call in errors.

    The plan holds the rectangles of the connections as lowered; a mask built from it after a
    connection was added or removed would silently show the old ones.
    """
    owner = "ExecutionPlan" if where.startswith("ExecutionPlan") else f"ExecutionPlan given to {where}"
    layout_stamp(plan.layout)  # counts a region replaced behind the dict's back (O(regions))
    check_unchanged(plan.layout, plan.layout_stamp, owner)
    check_topology_unchanged(plan.topology, plan.topology_stamp, owner,
                             f"lower the plan again (lower(topology, layout)) and call {where} with the new one")
    if topology is not None and topology is not plan.topology and not _equal(topology, plan.topology):
        raise SchemaError(
            f"{where}: the plan was lowered from another {type(plan.topology).__name__} than the topology given "
            f"({type(topology).__name__}), so the mask would show that topology's connections; pass the "
            "topology the plan was lowered from, or leave plan out to lower this one")
    differs = None if layout is None else describe_differences(layout, plan.layout)
    if differs is not None:
        raise SchemaError(
            f"{where}: the layout given is not the one the plan was lowered from ({differs}), so the mask "
            "would show the positions of the plan's layout; pass the layout the plan was lowered from, "
            "or leave plan out to lower this one")


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # a comparison that fails counts as different
        return False


def block_mask(topology: Any, layout: Any, block_size: int = 128, *, plan: Optional[ExecutionPlan] = None) -> BlockMask:
    """Block-sparse form of the topology's mask (tiles of ``block_size`` over packed positions).
    A ``block_size`` that makes more tiles than the byte limit holds is refused before anything
    is lowered or allocated (``SizeLimitError`` naming the smallest block_size that fits).

    A given ``plan`` (``topology`` and ``layout`` may then be None) is refused with a
    ``SchemaError`` once its topology or layout has changed since it was lowered, or when it was
    lowered from another topology or layout than the ones given (:func:`check_plan_current`)."""
    if plan is not None:
        if not isinstance(plan, ExecutionPlan):
            raise CanvasTypeError(f"block_mask: plan must be an ExecutionPlan (lower(topology, layout)), got "
                                  f"{type(plan).__name__}")
        check_plan_current(plan, "block_mask", topology, layout)
    _check_tiles(int(plan.n) if plan is not None else int(layout.num_positions), block_size)
    plan = plan if plan is not None else lower(topology, layout)
    bl = plan.block_layout(block_size)
    num, idx = _pack_rows(bl.state > 0)
    fnum, fidx = _pack_rows(bl.state == BlockLayout.FULL)
    return BlockMask(plan, bl, int(block_size), num, idx, fnum, fidx)
