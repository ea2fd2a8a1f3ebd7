"""The cut of a canvas over a sequence-parallel group, and the collectives that move shares.

* :class:`CanvasSharding`: contiguous shares of the plan's packed positions, one per rank, cut on
  region-frame boundaries where that keeps shares within 10% of equal; per-rank work
  (:meth:`CanvasSharding.work`) and bytes sent per layer (:meth:`CanvasSharding.communication`).
* :func:`sequence_parallel_mesh`: a ``(dp, sp)`` ``DeviceMesh`` after checking the sizes.
* ``_all_to_all`` / ``_gather_packed``: ``torch.distributed.all_to_all_single`` wrapped in an
  autograd function whose backward is the reverse exchange (exact gradients).

Every check that can fail runs on every rank before any collective, so a bad setting raises the
same :class:`SequenceParallelError` everywhere instead of leaving a rank waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from canvas_core.errors import CanvasError
from canvas_core.schema._validate import is_int

__all__ = ["SequenceParallelError", "SequenceParallelWarning", "CanvasSharding", "sequence_parallel_mesh"]


class SequenceParallelError(CanvasError, ValueError):
    """A sequence-parallel setting is unusable (group, sizes, canvas too small, ...)."""


class SequenceParallelWarning(UserWarning):
    """A layer part that runs on the gathered whole sequence under sequence parallelism."""


# ---------------------------------------------------------------------------------------------
# process groups
# ---------------------------------------------------------------------------------------------
def _dist():
    import torch.distributed as dist

    return dist


def _require_initialised(what: str) -> None:
    dist = _dist()
    if not (dist.is_available() and dist.is_initialized()):
        raise SequenceParallelError(
            f"{what}: torch.distributed is not initialised. Call "
            "torch.distributed.init_process_group(...) first (torchrun sets the environment; "
            "backend 'gloo' on CPU, 'nccl' on GPUs), or run the model without sequence parallelism")


@torch.compiler.disable  # process groups are opaque to torch.compile
def _resolve_group(group: Any, what: str):
    """(process group or None for the default one, its size, this process's rank in it)."""
    _require_initialised(what)
    dist = _dist()
    if group is not None and hasattr(group, "get_group") and hasattr(group, "mesh"):  # DeviceMesh
        if group.ndim != 1:
            names = getattr(group, "mesh_dim_names", None)
            raise SequenceParallelError(
                f"{what}: got a {group.ndim}-d DeviceMesh {names}; pass its sequence-parallel "
                "dimension, e.g. mesh['sp'] (sequence_parallel_mesh builds one)")
        group = group.get_group()
    try:
        size = dist.get_world_size(group)
        rank = dist.get_rank(group)
    except Exception as e:  # not a process group
        raise SequenceParallelError(f"{what}: group={group!r} is not a process group or DeviceMesh "
                                    f"({e})") from e
    if rank < 0:
        raise SequenceParallelError(f"{what}: this process (global rank {dist.get_rank()}) is not a "
                                    "member of the given process group; pass the group this rank belongs to")
    return group, size, rank


def sequence_parallel_mesh(sp_size: int, device_type: Optional[str] = None):
    """A 2-d ``DeviceMesh`` ``(dp, sp)`` of the whole world: ``mesh['sp']`` groups ``sp_size``
    consecutive ranks that share one canvas, ``mesh['dp']`` the ranks holding the same share of
    different samples.  ``world_size`` must be a multiple of ``sp_size``.  Every rank checks the
    settings before the mesh's collectives, so a bad size raises on every rank instead of hanging.
    """
    _require_initialised("sequence_parallel_mesh")
    dist = _dist()
    world = dist.get_world_size()
    if not is_int(sp_size) or sp_size < 1:
        raise SequenceParallelError(f"sequence-parallel size must be a positive integer, got {sp_size!r}")
    sp_size = int(sp_size)
    if world % sp_size:
        raise SequenceParallelError(
            f"sequence-parallel size {sp_size} does not divide the world size {world}: the world is "
            f"split into (data-parallel) x (sequence-parallel) groups; use a sequence-parallel size "
            f"among {[d for d in range(1, world + 1) if world % d == 0]} or start {sp_size} x k processes")
    from torch.distributed.device_mesh import init_device_mesh

    if device_type is None:
        device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return init_device_mesh(device_type, (world // sp_size, sp_size), mesh_dim_names=("dp", "sp"))


# ---------------------------------------------------------------------------------------------
# the cut
# ---------------------------------------------------------------------------------------------
def _count(value: Any, name: str, where: str, minimum: int) -> int:
    """``value`` as an int ``>= minimum``, else :class:`SequenceParallelError` naming it."""
    if not is_int(value) or value < minimum:
        raise SequenceParallelError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _plan_of(obj: Any):
    from canvas_core.compiler.plan import ExecutionPlan

    if isinstance(obj, ExecutionPlan):
        return obj
    plan = getattr(obj, "plan", None)
    if isinstance(plan, ExecutionPlan):
        return plan
    if hasattr(obj, "regions") and hasattr(obj, "num_positions"):  # a layout: packing only
        from canvas_core.compiler.lowering import lower
        from canvas_core.schema.topology import CanvasTopology

        return lower(CanvasTopology(connections=[]), obj)
    raise SequenceParallelError(f"expected an ExecutionPlan, a canvas attention layer or a CanvasLayout, "
                                f"got {type(obj).__name__}")


def _linked_per_row(sg, n: int) -> np.ndarray:
    """``(n_row_segments,)`` linked keys of one query of each row segment."""
    return ((sg.grid > 0) * np.diff(sg.col_bounds)[None, :]).sum(axis=1).astype(np.int64)


def _rows_in(sg, lo: int, hi: int) -> np.ndarray:
    """Rows of each row segment that fall in ``[lo, hi)``."""
    a = np.maximum(sg.row_bounds[:-1], lo)
    b = np.minimum(sg.row_bounds[1:], hi)
    return np.maximum(b - a, 0).astype(np.int64)


@dataclass(frozen=True, eq=False)
class CanvasSharding:
    """How a canvas is cut into ``size`` contiguous shares of packed positions.

    Attributes:
        n: canvas positions N.
        size: ranks of the sequence-parallel group P.
        bounds: ``(P + 1,)`` packed cut points (``bounds[0] = 0``, ``bounds[-1] = N``).
        perm: ``(N,)`` ``perm[packed] = canonical`` (the plan's packing).
        whole_frames: True when every cut sits on a region-frame boundary.
    """

    n: int
    size: int
    bounds: Tuple[int, ...]
    perm: np.ndarray
    whole_frames: bool

    @classmethod
    def of(cls, obj: Any, size: int, *, tolerance: float = 0.05) -> "CanvasSharding":
        """Cut the canvas of ``obj`` (a plan, canvas attention layer or layout) into ``size`` shares.

        Each cut goes to the region-frame boundary nearest to ``k * N / size`` when that is
        within ``tolerance * N / size`` of it (so shares stay within ``2 * tolerance`` of equal);
        otherwise to the exact equal cut, inside a region-frame (harmless for the all-to-all
        scheme, which reassembles the whole sequence per head).
        """
        plan = _plan_of(obj)
        n = int(plan.n)
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise SequenceParallelError(f"sequence-parallel size must be a positive integer, got {size!r}")
        size = int(size)
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.floating, np.integer)) \
                or not 0 <= float(tolerance) < float("inf"):
            raise SequenceParallelError(f"CanvasSharding.of: tolerance must be a finite number >= 0 (a fraction of "
                                        f"one share, e.g. 0.05), got {tolerance!r}")
        if n < size:
            raise SequenceParallelError(
                f"canvas too small to split: {n} position(s) over a sequence-parallel group of {size} "
                f"ranks leaves a rank with nothing; use a sequence-parallel size <= {max(1, n)} "
                "(or run this canvas without sequence parallelism)")
        cand = {0, n, int(plan.n_covered)}
        for frames in plan.region_blocks.values():
            for runs in frames.values():
                for a, b in runs:
                    cand.update((int(a), int(b)))
        cand_arr = np.asarray(sorted(cand), dtype=np.int64)
        share = n / size
        bounds, whole, prev = [0], True, 0
        for k in range(1, size):
            ideal = int(round(k * share))
            j = int(np.searchsorted(cand_arr, ideal))
            best = None
            for c in cand_arr[max(0, j - 1): j + 1]:
                if abs(int(c) - ideal) <= tolerance * share and prev < c < n - (size - k - 1):
                    if best is None or abs(int(c) - ideal) < abs(best - ideal):
                        best = int(c)
            if best is None:
                best = min(max(ideal, prev + 1), n - (size - k))
                whole = whole and best in cand
            bounds.append(best)
            prev = best
        bounds.append(n)
        return cls(n, size, tuple(bounds), np.asarray(plan.perm, dtype=np.int64), whole)

    # ------------------------------------------------------------------------------------------
    @property
    def sizes(self) -> List[int]:
        return [self.bounds[r + 1] - self.bounds[r] for r in range(self.size)]

    def positions(self, rank: int) -> np.ndarray:
        """Canonical positions held by ``rank``, in the order of its local rows."""
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < self.size:
            raise SequenceParallelError(f"CanvasSharding.positions: rank must be an integer in [0, {self.size}) "
                                        f"(the rank within the sequence-parallel group), got {rank!r}")
        return self.perm[self.bounds[rank]: self.bounds[rank + 1]]

    def matches(self, plan: Any) -> bool:
        """Whether ``plan`` (a plan, canvas attention layer or layout) packs the canvas as this sharding."""
        plan = _plan_of(plan)
        return int(plan.n) == self.n and np.array_equal(np.asarray(plan.perm), self.perm)

    def work(self, plan_or_layer: Any, n_heads: Optional[int] = None) -> List[Dict[str, Any]]:
        """Per-rank work of one layer (list of dicts, one per rank).

        ``positions``: rows held; ``heads``: softmax heads computed; ``pairs``: linked
        (query, key) pairs of the softmax types times the rank's share of heads (the attention
        work the rank does: every rank runs the whole plan on its heads); ``query_pairs``: linked
        pairs whose query the rank holds (what a position-split scheme would compute);
        ``gathered_pairs``: pairs of the non-softmax types, which every rank computes in full.
        """
        plan = _plan_of(plan_or_layer)
        if not self.matches(plan):
            raise SequenceParallelError("CanvasSharding.work: the plan's packing differs from the sharding's")
        soft = _softmax_types(plan_or_layer)
        H = _count(n_heads if n_heads is not None else getattr(plan_or_layer, "n_heads", 1), "n_heads",
                   "CanvasSharding.work", 1)
        hb = _head_bounds(H, self.size)
        soft_total, other_total = 0, 0
        q_pairs = np.zeros(self.size, dtype=np.int64)
        for fn in plan.groups:
            sg = plan.segment_grid(fn)
            per_row = _linked_per_row(sg, self.n)
            total = int((per_row * np.diff(sg.row_bounds)).sum())
            if fn in soft:
                soft_total += total
            else:
                other_total += total
            for r in range(self.size):
                q_pairs[r] += int((per_row * _rows_in(sg, self.bounds[r], self.bounds[r + 1])).sum())
        out = []
        for r in range(self.size):
            h = hb[r + 1] - hb[r]
            out.append({"rank": r, "positions": self.sizes[r],
                        "packed": (self.bounds[r], self.bounds[r + 1]), "heads": h,
                        "pairs": soft_total * h / max(1, H), "query_pairs": int(q_pairs[r]),
                        "gathered_pairs": other_total})
        return out

    def summary(self, layer: Any, *, batch: int = 1, element_bytes: int = 4) -> str:
        """A table of :meth:`work` and :meth:`communication` for ``layer``, one line per rank."""
        work = self.work(layer)
        comm = self.communication(layer, batch=batch, element_bytes=element_bytes)
        lines = [f"CanvasSharding: N={self.n} over {self.size} rank(s), cuts {list(self.bounds)}"
                 + ("" if self.whole_frames else " (some inside a region-frame)"),
                 "rank  positions  heads  pairs x heads  query pairs  gathered pairs  MiB sent / fwd"]
        H = max(1, int(getattr(layer, "n_heads", 1)))
        for w, c in zip(work, comm):
            lines.append(f"{w['rank']:>4}  {w['positions']:>9}  {w['heads']:>5}  {w['pairs'] * H:>13.0f}  "
                         f"{w['query_pairs']:>11}  {w['gathered_pairs']:>14}  {c['total'] / 2 ** 20:>14.3f}")
        return "\n".join(lines)

    def communication(self, plan_or_layer: Any, *, batch: int = 1, d_model: Optional[int] = None,
                      n_heads: Optional[int] = None, element_bytes: int = 4) -> List[Dict[str, float]]:
        """Bytes each rank sends per layer, forward (backward sends the same again).

        ``qkv``: ``B * n_r * 3 * head_dim * (H - h_r)`` (its positions' q/k/v of the others' heads),
        ``out``: ``B * (N - n_r) * h_r * head_dim`` (its heads' output of the others' positions),
        both only when the layer has a softmax-family type; ``gather``: ``B * n_r * D * (P - 1)``
        when it has a non-softmax type.
        """
        where = "CanvasSharding.communication"
        plan = _plan_of(plan_or_layer)
        d_model = d_model if d_model is not None else getattr(plan_or_layer, "d_model", None)
        if d_model is None:
            raise SequenceParallelError(f"{where}: pass d_model= with a plan or layout")
        D = _count(d_model, "d_model", where, 1)
        H = _count(n_heads if n_heads is not None else getattr(plan_or_layer, "n_heads", 1), "n_heads", where, 1)
        batch = _count(batch, "batch", where, 1)
        element_bytes = _count(element_bytes, "element_bytes", where, 1)
        soft = _softmax_types(plan_or_layer)
        has_soft = any(f in soft for f in plan.groups)
        has_other = any(f not in soft for f in plan.groups)
        dh = D // H
        hb = _head_bounds(H, self.size)
        out = []
        for r in range(self.size):
            n_r, h = self.sizes[r], hb[r + 1] - hb[r]
            qkv = batch * n_r * 3 * dh * (H - h) if has_soft else 0
            back = batch * (self.n - n_r) * h * dh if has_soft else 0
            gather = batch * n_r * D * (self.size - 1) if has_other else 0
            out.append({"rank": r, "qkv": qkv * element_bytes, "out": back * element_bytes,
                        "gather": gather * element_bytes,
                        "total": (qkv + back + gather) * element_bytes})
        return out


def _softmax_types(obj: Any) -> Tuple[str, ...]:
    soft = getattr(obj, "softmax_types", None)
    if soft is None:
        from canvas_core.plugins.builtin import SOFTMAX_FAMILY as soft
    return tuple(soft)


def _head_bounds(n_heads: int, size: int) -> List[int]:
    """Heads split as evenly as possible: rank r computes heads ``[b[r], b[r + 1])``."""
    base, extra = divmod(int(n_heads), int(size))
    b = [0]
    for r in range(size):
        b.append(b[-1] + base + (1 if r < extra else 0))
    return b


# ---------------------------------------------------------------------------------------------
# collectives with exact gradients
# ---------------------------------------------------------------------------------------------
class _AllToAll(torch.autograd.Function):
    """Flat ``all_to_all_single`` with per-rank split sizes; backward is the reverse exchange."""

    @staticmethod
    def forward(ctx, x, send: List[int], recv: List[int], group):
        ctx.send, ctx.recv, ctx.group = send, recv, group
        out = x.new_empty(sum(recv))
        _dist().all_to_all_single(out, x.contiguous(), recv, send, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        g = grad.new_empty(sum(ctx.send))
        _dist().all_to_all_single(g, grad.contiguous(), ctx.send, ctx.recv, group=ctx.group)
        return g, None, None, None


@torch.compiler.disable  # under torch.compile: a graph break around the exchange (process groups are opaque)
def _all_to_all(x: torch.Tensor, send: List[int], recv: List[int], group) -> torch.Tensor:
    return _AllToAll.apply(x.reshape(-1), list(send), list(recv), group)


def _gather_packed(x: torch.Tensor, sizes: Sequence[int], rank: int, group) -> torch.Tensor:
    """Local share ``(B, n_r, ...)`` -> the whole canvas ``(N, B, ...)`` in packed order."""
    xt = x.transpose(0, 1).contiguous()  # (n_r, B, ...)
    per_row = int(np.prod(xt.shape[1:])) if xt.dim() > 1 else 1
    P = len(sizes)
    send = [sizes[rank] * per_row] * P
    recv = [s * per_row for s in sizes]
    flat = _all_to_all(xt.reshape(-1).repeat(P), send, recv, group)
    return flat.view(sum(sizes), *xt.shape[1:])
