"""Sequence parallelism for canvas attention on ``torch.distributed`` (all-to-all over heads).

A sequence-parallel (SP) group of P ranks shares one canvas: rank r holds the packed positions
``[bounds[r], bounds[r + 1])`` (a contiguous share of the plan's packed order, so a share is a run
of whole region-frames wherever the cut can sit on a region-frame boundary), as a tensor
``(B, n_r, D)`` whose rows are the canonical positions ``perm[bounds[r]:bounds[r + 1]]`` in that
order.  Everything position-wise (norms, MLPs, projections, losses) runs on the share unchanged.

One canvas attention layer (:class:`SequenceParallelCanvasAttention`):

1. the shared QKV projection runs on the local share;
2. one ``all_to_all`` turns "my positions, all heads" into "all positions, my heads" (rank r gets
   the heads ``head_bounds[r]:head_bounds[r + 1]`` of the whole packed sequence);
3. the layer's softmax kernels run **unchanged** on those heads over the whole canvas
   (:meth:`CanvasAttention.attend_heads`), so every query sees exactly the keys, weights and
   softmax it sees on one process;
4. a second ``all_to_all`` brings the mixed heads of the local positions back, and the output
   projection runs on the share;
5. non-softmax types, whose modules mix heads and channels, need the whole sequence: the layer
   says so when it is built (:class:`SequenceParallelWarning`), gathers the canvas
   (an all-to-all all-gather), runs them as on one process and keeps the local rows.

The collectives are autograd functions whose backward is the opposite exchange, so gradients are
exact too.  Helpers: :func:`sequence_parallel_mesh` (a ``(dp, sp)`` ``DeviceMesh`` with checks),
:func:`shard_canvas` / :func:`unshard_canvas`, :func:`parallelize_canvas` (wrap every canvas
attention layer of a model), :class:`CanvasSharding` (the cut, per-rank work and communication).
Bad settings raise :class:`SequenceParallelError` on every rank before any collective.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from canvas_core.errors import CanvasError, ShapeError

__all__ = [
    "SequenceParallelError",
    "SequenceParallelWarning",
    "CanvasSharding",
    "SequenceParallelCanvasAttention",
    "sequence_parallel_mesh",
    "shard_canvas",
    "unshard_canvas",
    "parallelize_canvas",
]


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
    if isinstance(sp_size, bool) or not isinstance(sp_size, (int, np.integer)) or sp_size < 1:
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


@dataclass(frozen=True)
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
        return self.perm[self.bounds[rank]: self.bounds[rank + 1]]

    def matches(self, plan: Any) -> bool:
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
        soft = getattr(plan_or_layer, "softmax_types", None)
        if soft is None:
            from canvas_core.runtime.canvas_attention import SOFTMAX_TYPES as soft
        H = n_heads if n_heads is not None else getattr(plan_or_layer, "n_heads", 1)
        hb = _head_bounds(H, self.size)
        soft_total, other_total = 0, 0
        q_pairs = np.zeros(self.size, dtype=np.int64)
        for fn, g in plan.groups.items():
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

    def communication(self, plan_or_layer: Any, *, batch: int = 1, d_model: Optional[int] = None,
                      n_heads: Optional[int] = None, element_bytes: int = 4) -> List[Dict[str, float]]:
        """Bytes each rank sends per layer, forward (backward sends the same again).

        ``qkv``: ``B * n_r * 3 * head_dim * (H - h_r)`` (its positions' q/k/v of the others' heads),
        ``out``: ``B * (N - n_r) * h_r * head_dim`` (its heads' output of the others' positions),
        both only when the layer has a softmax-family type; ``gather``: ``B * n_r * D * (P - 1)``
        when it has a non-softmax type.
        """
        plan = _plan_of(plan_or_layer)
        D = int(d_model if d_model is not None else getattr(plan_or_layer, "d_model"))
        H = int(n_heads if n_heads is not None else getattr(plan_or_layer, "n_heads", 1))
        soft = tuple(getattr(plan_or_layer, "softmax_types", ("cross_attention", "self_attention")))
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


# ---------------------------------------------------------------------------------------------
# shard / unshard
# ---------------------------------------------------------------------------------------------
def _sharding_and_rank(sharding: Any, group: Any, what: str):
    if isinstance(sharding, SequenceParallelCanvasAttention):
        return sharding.sharding, sharding.rank, sharding.group
    group, size, rank = _resolve_group(group, what)
    if not isinstance(sharding, CanvasSharding):
        sharding = CanvasSharding.of(sharding, size)
    if sharding.size != size:
        raise SequenceParallelError(f"{what}: the sharding is for {sharding.size} ranks but the process "
                                    f"group has {size}; build it with CanvasSharding.of(..., {size})")
    return sharding, rank, group


def shard_canvas(x: torch.Tensor, sharding: Any, group: Any = None) -> torch.Tensor:
    """This rank's share ``(B, n_r, ...)`` of a whole canonical canvas tensor ``(B, N, ...)``.

    ``sharding``: a :class:`CanvasSharding`, a :class:`SequenceParallelCanvasAttention`, or a
    plan / canvas attention layer / layout (cut with :meth:`CanvasSharding.of` for the group's
    size).  ``group``: the sequence-parallel process group or 1-d ``DeviceMesh`` (default: the
    whole world).  No communication: every rank of the group is expected to hold ``x``.
    """
    sharding, rank, _ = _sharding_and_rank(sharding, group, "shard_canvas")
    if x.dim() < 2 or x.shape[1] != sharding.n:
        raise ShapeError(f"shard_canvas expects a canvas tensor (B, {sharding.n}, ...), got {tuple(x.shape)}")
    idx = torch.as_tensor(sharding.positions(rank), device=x.device)
    return x.index_select(1, idx)


def unshard_canvas(x: torch.Tensor, sharding: Any, group: Any = None) -> torch.Tensor:
    """The whole canonical canvas ``(B, N, ...)`` from every rank's share (differentiable all-gather;
    the gradient of each rank's share is the sum of the gradients the ranks give it)."""
    sharding, rank, group = _sharding_and_rank(sharding, group, "unshard_canvas")
    n_r = sharding.sizes[rank]
    if x.dim() < 2 or x.shape[1] != n_r:
        raise ShapeError(f"unshard_canvas: rank {rank} holds {n_r} positions, got a tensor {tuple(x.shape)}")
    full = _gather_packed(x, sharding.sizes, rank, group)  # (N, B, ...) packed
    inv = np.empty(sharding.n, dtype=np.int64)
    inv[sharding.perm] = np.arange(sharding.n)
    full = full.index_select(0, torch.as_tensor(inv, device=x.device))
    return full.transpose(0, 1)


# ---------------------------------------------------------------------------------------------
# the layer
# ---------------------------------------------------------------------------------------------
class SequenceParallelCanvasAttention(nn.Module):
    """A :class:`~canvas_core.runtime.canvas_attention.CanvasAttention` (or ``AttentionDispatcher``)
    run by a sequence-parallel group; input and output are this rank's share ``(B, n_r, D)``.

    Args:
        attn: the layer (same parameters on every rank, e.g. built after the same seed, or kept
            in sync by DDP / FSDP). Its parameters are used as they are (no copy).
        group: the sequence-parallel process group, a 1-d ``DeviceMesh`` (``mesh['sp']``), or
            None for the whole world.
        sharding: a :class:`CanvasSharding` shared by every layer of a model (all layers must cut
            the canvas the same way); default ``CanvasSharding.of(attn.plan, group size)``.

    The output equals rows ``sharding.positions(rank)`` of ``attn(x_whole)`` (up to float
    rounding; with dropout > 0 the random masks differ from a one-process run).
    """

    def __init__(self, attn: nn.Module, group: Any = None, *, sharding: Optional[CanvasSharding] = None) -> None:
        super().__init__()
        from canvas_core.runtime.canvas_attention import CanvasAttention

        what = f"SequenceParallelCanvasAttention({type(attn).__name__})"
        if not isinstance(attn, CanvasAttention):
            raise SequenceParallelError(f"{what}: expected a CanvasAttention or AttentionDispatcher")
        if getattr(attn, "residual_accumulator", None) is not None:
            raise SequenceParallelError(
                f"{what}: a residual_accumulator needs whole regions; build the dispatcher without it "
                "and update the accumulator from unshard_canvas(output) - unshard_canvas(input)")
        group, size, rank = _resolve_group(group, what)
        if sharding is None:
            sharding = CanvasSharding.of(attn.plan, size)
        if not isinstance(sharding, CanvasSharding):
            raise SequenceParallelError(f"{what}: sharding must be a CanvasSharding, got {type(sharding).__name__}")
        if sharding.size != size:
            raise SequenceParallelError(f"{what}: the sharding is for {sharding.size} ranks but the process "
                                        f"group has {size}; use CanvasSharding.of(plan, {size})")
        if not sharding.matches(attn.plan):
            raise SequenceParallelError(f"{what}: the sharding was cut for another canvas packing "
                                        f"(N={sharding.n} vs {attn.plan.n}); every layer must share one layout")
        soft, other = attn.part_types()
        if attn.qkv is not None and attn.n_heads < size:
            raise SequenceParallelError(
                f"{what}: n_heads={attn.n_heads} is smaller than the sequence-parallel size {size}; "
                f"the all-to-all splits heads across ranks: use at most {attn.n_heads} ranks per group "
                "or more heads")
        self.attn = attn
        self.group, self.size, self.rank = group, size, rank
        self.sharding = sharding
        self.head_bounds = _head_bounds(attn.n_heads, size)
        self.gathered_types = tuple(other)
        if other:
            warnings.warn(
                f"{what}: the non-softmax type(s) {list(other)} mix the whole sequence; under sequence "
                f"parallelism each rank gathers the canvas ({sharding.n} positions) for them and keeps "
                "its share", SequenceParallelWarning, stacklevel=2)
        inv = np.empty(sharding.n, dtype=np.int64)
        inv[sharding.perm] = np.arange(sharding.n)
        self.identity_perm = bool(np.array_equal(sharding.perm, np.arange(sharding.n)))
        # rank-dependent indices are plain attributes, not buffers: DDP broadcasts buffers from rank 0
        self._index_np = {"local": sharding.positions(rank), "perm": sharding.perm, "inv": inv}
        self._index_cache: Dict[Tuple[str, Any], torch.Tensor] = {}

    def _index(self, name: str, device) -> torch.Tensor:
        key = (name, device)
        t = self._index_cache.get(key)
        if t is None:
            t = self._index_cache[key] = torch.as_tensor(self._index_np[name]).to(device)
        return t

    # ------------------------------------------------------------------------------------------
    @property
    def n_local(self) -> int:
        return self.sharding.sizes[self.rank]

    def work(self) -> List[Dict[str, Any]]:
        """Per-rank work of this layer (see :meth:`CanvasSharding.work`)."""
        return self.sharding.work(self.attn)

    def extra_repr(self) -> str:
        return (f"rank={self.rank}/{self.size}, positions={self.n_local}/{self.sharding.n}, "
                f"heads={self.head_bounds[self.rank + 1] - self.head_bounds[self.rank]}/{self.attn.n_heads}")

    def forward(self, x: torch.Tensor, active_regions: Optional[Iterable[str]] = None) -> torch.Tensor:
        """``(B, n_r, D)`` local share -> ``(B, n_r, D)`` (updated rows replaced, others unchanged)."""
        attn = self.attn
        n_r, D = self.n_local, attn.d_model
        if x.dim() != 3 or x.shape[1] != n_r or x.shape[2] != D:
            raise ShapeError(f"SequenceParallelCanvasAttention on rank {self.rank} expects its share "
                             f"(B, {n_r}, {D}) (shard_canvas cuts it), got {tuple(x.shape)}")
        if active_regions is not None:
            active_regions = frozenset(active_regions)
        soft, other = attn.part_types(active_regions)
        acc = None
        if soft:
            acc = self._softmax_part(x, active_regions)
        if other:
            xs = _gather_packed(x, self.sharding.sizes, self.rank, self.group)  # (N, B, D) packed
            if not self.identity_perm:
                xs = xs.index_select(0, self._index("inv", x.device))
            o = attn.other_types_output(xs.transpose(0, 1), active_regions)
            o = o.index_select(1, self._index("local", x.device))
            acc = o if acc is None else acc + o
        if acc is None:
            return x
        upd = attn.updated_positions(active_regions, x.device)
        if upd is None:
            return acc
        return torch.where(upd.index_select(0, self._index("local", x.device))[None, :, None], acc, x)

    def _softmax_part(self, x: torch.Tensor, active_regions) -> torch.Tensor:
        attn = self.attn
        B, n_r, D = x.shape
        H, dh, N = attn.n_heads, attn.head_dim, self.sharding.n
        hb, sizes, me = self.head_bounds, self.sharding.sizes, self.rank
        h_me = hb[me + 1] - hb[me]
        t = attn.qkv(x).view(B, n_r, 3, H, dh).transpose(0, 1)  # (n_r, B, 3, H, dh)
        send = torch.cat([t[:, :, :, hb[j]:hb[j + 1]].reshape(-1) for j in range(self.size)])
        recv = _all_to_all(send, [n_r * B * 3 * (hb[j + 1] - hb[j]) * dh for j in range(self.size)],
                           [s * B * 3 * h_me * dh for s in sizes], self.group)
        full = recv.view(N, B * 3 * h_me * dh)
        if not self.identity_perm:
            full = full.index_select(0, self._index("inv", x.device))  # packed -> canonical rows
        qkv = full.view(N, B, 3, h_me, dh).permute(2, 1, 3, 0, 4)  # (3, B, h, N, dh)
        mixed, bias_weight = attn.attend_heads(qkv[0], qkv[1], qkv[2], active_regions)
        m = mixed.permute(2, 0, 1, 3)  # (N, B, h, dh) canonical
        if not self.identity_perm:
            m = m.index_select(0, self._index("perm", x.device))  # canonical -> packed rows
        back = _all_to_all(m.reshape(-1), [s * B * h_me * dh for s in sizes],
                           [n_r * B * (hb[j + 1] - hb[j]) * dh for j in range(self.size)], self.group)
        parts = back.split([n_r * B * (hb[j + 1] - hb[j]) * dh for j in range(self.size)])
        o = torch.cat([p.view(n_r, B, hb[j + 1] - hb[j], dh) for j, p in enumerate(parts)], dim=2)
        o = o.permute(1, 0, 2, 3).reshape(B, n_r, D)
        if bias_weight is not None:
            bias_weight = bias_weight.index_select(0, self._index("local", x.device))
        return attn.project_out(o, bias_weight)


def parallelize_canvas(module: nn.Module, group: Any = None, *,
                       sharding: Optional[CanvasSharding] = None) -> CanvasSharding:
    """Wrap, in place, every canvas attention layer inside ``module`` in a
    :class:`SequenceParallelCanvasAttention` with one shared :class:`CanvasSharding` (cut from the
    first layer's plan).  Parameters stay the same objects (optimizers built before still work).
    Returns the sharding, for :func:`shard_canvas` / :func:`unshard_canvas`.  The caller shards
    the canvas before the first layer and works on shares from there on."""
    from canvas_core.runtime.canvas_attention import CanvasAttention

    targets = []
    for parent in module.modules():
        if isinstance(parent, SequenceParallelCanvasAttention):
            continue
        for name, child in parent.named_children():
            if isinstance(child, CanvasAttention) and not isinstance(parent, SequenceParallelCanvasAttention):
                targets.append((parent, name, child))
    if not targets:
        raise SequenceParallelError(f"parallelize_canvas: {type(module).__name__} contains no CanvasAttention / "
                                    "AttentionDispatcher layer")
    group, size, _ = _resolve_group(group, "parallelize_canvas")
    if sharding is None:
        sharding = CanvasSharding.of(targets[0][2].plan, size)
    for parent, name, child in targets:
        setattr(parent, name, SequenceParallelCanvasAttention(child, group, sharding=sharding))
    return sharding
