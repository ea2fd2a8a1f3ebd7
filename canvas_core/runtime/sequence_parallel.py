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
Bad settings raise :class:`SequenceParallelError` on every rank before any collective; ranks
whose layers or calls differ (heads, links, ``beta``, batch size, dtype, autocast, ``active_regions``) are
refused alike before the exchanges (:mod:`canvas_core.runtime.sp_agreement`), and so are
:func:`shard_canvas` / :func:`unshard_canvas` calls whose tensors differ between the ranks.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from canvas_core.errors import CanvasTypeError, SchemaError, ShapeError
from canvas_core.runtime.input_checks import check_region_names, check_tensor
from canvas_core.runtime.layer_observers import UPDATE_OBSERVERS, observers
from canvas_core.runtime.sharding import (
    CanvasSharding,
    SequenceParallelError,
    SequenceParallelWarning,
    _all_to_all,
    _gather_packed,
    _head_bounds,
    _resolve_group,
    sequence_parallel_mesh,
)
from canvas_core.runtime.sp_agreement import agree_on_call, agree_on_canvas, agree_on_layers, layer_settings
from canvas_core.schema.staleness import (check_topology_unchanged, check_topology_unchanged_traced, check_unchanged,
                                          check_unchanged_traced)

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


# ---------------------------------------------------------------------------------------------
# shard / unshard
# ---------------------------------------------------------------------------------------------
def _sharding_and_rank(sharding: Any, group: Any, what: str):
    """(sharding or None, this rank, group, group size, this rank's failure or None).  Only an
    uninitialised or unusable group raises here: a sharding refused on one rank is returned as the
    failure, so that the ranks first learn about it together."""
    if isinstance(sharding, SequenceParallelCanvasAttention):
        return sharding.sharding, sharding.rank, sharding.group, sharding.size, None
    group, size, rank = _resolve_group(group, what)
    try:
        if not isinstance(sharding, CanvasSharding):
            sharding = CanvasSharding.of(sharding, size)
        if sharding.size != size:
            raise SequenceParallelError(f"{what}: the sharding is for {sharding.size} ranks but the process "
                                        f"group has {size}; build it with CanvasSharding.of(..., {size})")
    except Exception as exc:  # noqa: BLE001 - told to every rank, then raised
        return None, rank, group, size, exc
    return sharding, rank, group, size, None


def _check_flag(check_inputs: Any, what: str) -> None:
    if not isinstance(check_inputs, bool):
        raise SequenceParallelError(f"{what}: check_inputs must be True or False, got {check_inputs!r}")


def _check_canvas(x: Any, what: str, dims: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise CanvasTypeError(f"{what} expects a tensor {dims}, got {type(x).__name__}")
    if x.dim() < 2:
        raise ShapeError(f"{what} expects a canvas tensor {dims}, got {tuple(x.shape)}")


def _checked_call(what: str, x: Any, sharding: Any, group: Any, check_inputs: Any, whole: bool):
    """``(sharding, rank, group)`` of a :func:`shard_canvas` (``whole``: ``x`` is the whole canvas)
    or :func:`unshard_canvas` call (``x`` is this rank's share), after this rank's own checks and,
    with ``check_inputs``, the ranks' agreement on the call; a failure on any rank is raised."""
    _check_flag(check_inputs, what)
    sharding, rank, group, size, failure = _sharding_and_rank(sharding, group, what)
    if failure is None:
        n = sharding.n if whole else sharding.sizes[rank]
        try:
            _check_canvas(x, what, f"(B, {n}, ...)")
            if x.shape[1] != n:
                raise ShapeError(f"{what} on rank {rank} expects a canvas tensor (B, {sharding.n}, ...), got "
                                 f"{tuple(x.shape)}" if whole else
                                 f"{what}: rank {rank} holds {n} positions, got a tensor {tuple(x.shape)}")
        except Exception as exc:  # noqa: BLE001 - told to every rank, then raised
            failure = exc
    if check_inputs:
        agree_on_canvas(what, x, sharding, group, size, rank, failure, whole=whole)
    elif failure is not None:
        raise failure
    return sharding, rank, group


def shard_canvas(x: torch.Tensor, sharding: Any, group: Any = None, *, check_inputs: bool = False) -> torch.Tensor:
    """This rank's share ``(B, n_r, ...)`` of a whole canonical canvas tensor ``(B, N, ...)``.

    ``sharding``: a :class:`CanvasSharding`, a :class:`SequenceParallelCanvasAttention`, or a
    plan / canvas attention layer / layout (cut with :meth:`CanvasSharding.of` for the group's
    size).  ``group``: the sequence-parallel process group or 1-d ``DeviceMesh`` (default: the
    whole world; ignored when ``sharding`` is a wrapped layer, which brings its own group).
    Every rank of the group is expected to hold the same-shaped ``x``.

    By default nothing is communicated (each rank only cuts its own tensor), so the call may be
    made on any subset of ranks; a rank fed another batch is told by the layer's or
    :func:`unshard_canvas`'s own comparison.  ``check_inputs=True`` compares the call across the
    ranks of the group here already (the sharding, dtype, device type, batch size, sequence length
    and trailing shape, and whether each rank's own checks passed: one ``all_gather`` of a few
    int64, :func:`~canvas_core.runtime.sp_agreement.agree_on_canvas`) and raises the same
    :class:`SequenceParallelError` on every rank when they differ; that makes the call a
    collective (every rank of the group, in the same order).
    """
    sharding, rank, _ = _checked_call("shard_canvas", x, sharding, group, check_inputs, whole=True)
    idx = torch.as_tensor(sharding.positions(rank), device=x.device)
    return x.index_select(1, idx)


def unshard_canvas(x: torch.Tensor, sharding: Any, group: Any = None, *, check_inputs: bool = True) -> torch.Tensor:
    """The whole canonical canvas ``(B, N, ...)`` from every rank's share (differentiable all-gather;
    the gradient of each rank's share is the sum of the gradients the ranks give it).

    ``check_inputs``: before the exchange, compare the sharding, dtype, device type, batch size
    and trailing shape of every rank's share (and whether each holds its share's length) and raise
    the same :class:`SequenceParallelError` on every rank when they differ, instead of a crash or a
    hang inside the collective (one ``all_gather`` of a few int64).  ``False`` skips it."""
    sharding, rank, group = _checked_call("unshard_canvas", x, sharding, group, check_inputs, whole=False)
    full = _gather_packed(x, sharding.sizes, rank, group)  # (N, B, ...) packed
    inv = np.empty(sharding.n, dtype=np.int64)
    inv[sharding.perm] = np.arange(sharding.n)
    full = full.index_select(0, torch.as_tensor(inv, device=x.device))
    return full.transpose(0, 1)


# ---------------------------------------------------------------------------------------------
# the layer
# ---------------------------------------------------------------------------------------------
def _owner(attn: nn.Module) -> str:
    """The object a stale-layout error names: the wrapped layer, which holds the layout's indices."""
    return f"{type(attn).__name__} (wrapped by SequenceParallelCanvasAttention)"


# what each library tool that observes a layer's updates should do instead under sequence parallelism
_OBSERVER_FIXES = {
    "canvas_core.runtime.telemetry": (
        "record_telemetry / telemetry", "they measure the whole canvas, which no rank holds: end the recording "
        "(one opened on the model before parallelize_canvas, or one of the wrapped layer, sp_layer.attn) and "
        "measure a plain copy instead (save_canvas_checkpoint(model, path, schema), "
        "load_canvas_checkpoint(plain_model, path, schema), telemetry(plain_model, x_whole))"),
    "canvas_core.runtime.verify": (
        "verify_structure", "it probes the model on the whole canvas: verify the model before parallelize_canvas, "
        "or a plain copy loaded from its checkpoint"),
}


def _observed(attn: nn.Module) -> Optional[SequenceParallelError]:
    """The refusal of a wrapped layer that has update observers (``observe_updates``): they are
    promised the whole canvas, which no rank holds, so running would silently skip them."""
    found = observers(attn, UPDATE_OBSERVERS)  # compiled: guarded per layer (layer_observers)
    if not found:
        return None
    tools, fixes = [], []
    for fn in found:
        tool, fix = _OBSERVER_FIXES.get(getattr(fn, "__module__", None), (
            str(getattr(fn, "__qualname__", type(fn).__name__)).rsplit("<locals>.", 1)[-1],
            "remove it (handle.remove()) or run the layer without sequence parallelism"))
        if tool not in tools:
            tools.append(tool)
            fixes.append(f"{tool}: {fix}")
    return SequenceParallelError(
        f"{_owner(attn)} has {len(found)} update observer(s) attached with observe_updates (from "
        f"{', '.join(tools)}); they are called with the whole canvas (B, N, D) and each rank only holds its "
        "share, so under sequence parallelism they would never be called. " + "; ".join(fixes))


def _in_rollout(attn: nn.Module) -> Optional[SequenceParallelError]:
    """The refusal of a wrapped layer that a rollout (``canvas_core.incremental``) has installed
    itself on: a step's input is one frame, not this rank's share."""
    if "_updates" not in attn.__dict__:
        return None
    return SequenceParallelError(
        f"{_owner(attn)} is inside a rollout (canvas_core.incremental installed itself on it): a rollout step "
        "gives the layer one frame, a sequence-parallel layer takes its rank's share of the whole canvas, so the "
        "result would be wrong. Roll out a plain copy instead: save_canvas_checkpoint(model, path, schema), "
        "load_canvas_checkpoint(plain_model, path, schema) into a model built without parallelize_canvas, "
        "then incremental(plain_model, layout)")


def _check_plan(attn: nn.Module) -> None:
    """Refuse the wrapped layer once the layout or topology its plan was lowered from has changed
    (the layer's own check, which the exchanges here bypass: they run its plan directly)."""
    traced = torch.compiler.is_compiling()  # traced: no t_current guard, none per region or connection
    (check_unchanged_traced if traced else check_unchanged)(
        attn.plan.layout, attn.__dict__.get("_layout_stamp"), _owner(attn))
    (check_topology_unchanged_traced if traced else check_topology_unchanged)(
        attn.plan.topology, attn.__dict__.get("_topology_stamp"), _owner(attn))


def _stale(attn: nn.Module) -> Optional[SchemaError]:
    """The wrapped layer's stale-plan error, or None when its layout and topology are as they were
    at its build."""
    try:
        _check_plan(attn)
    except SchemaError as exc:
        return exc
    return None


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
        check_inputs: before the exchanges of each forward, compare the batch size, dtype,
            autocast state, ``active_regions`` and ``beta`` of the call across the ranks (one
            ``all_gather`` of a few int64, see :mod:`canvas_core.runtime.sp_agreement`) and raise the same
            :class:`SequenceParallelError` on every rank when they differ, instead of a crash
            inside the collective or a silently different result.  ``False`` skips it; it is
            compared across the ranks when the layer is built, as the settings are.

    The output equals rows ``sharding.positions(rank)`` of ``attn(x_whole)`` (up to float
    rounding; with dropout > 0 the random masks differ from a one-process run).  A layout changed
    after ``attn`` was built is refused with the layer's own ``SchemaError`` (with ``check_inputs``,
    every other rank gets a ``SequenceParallelError`` naming that rank, before any exchange).

    Checkpoints and telemetry name its tensors as the wrapped layer's (``attn.qkv.weight``, not
    ``attn.attn.qkv.weight``): ``canvas_wrapped_attr`` tells them where the layer is held.
    """

    canvas_wrapped_attr = "attn"

    def __init__(self, attn: nn.Module, group: Any = None, *, sharding: Optional[CanvasSharding] = None,
                 check_inputs: bool = True) -> None:
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
        stale = _stale(attn)  # agreed on below, raised after: every rank refuses, none waits alone
        # before any check whose outcome could differ between ranks: one rank refusing alone
        # would leave the others waiting in the next collective
        agree_on_layers(what, group, size, rank, {**layer_settings(attn, sharding), "check_inputs": repr(check_inputs),
                                                  "layout and topology unchanged since the layer was built": repr(stale is None)})
        if stale is not None:
            raise stale
        if not isinstance(check_inputs, bool):
            raise SequenceParallelError(f"{what}: check_inputs must be True or False, got {check_inputs!r}")
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
        self.check_inputs = check_inputs
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
        """``(B, n_r, D)`` local share -> ``(B, n_r, D)``: updated rows replaced, others unchanged, or
        the change (:meth:`delta`) when the wrapped layer was built with ``returns="delta"``."""
        if getattr(self.attn, "returns", "state") == "delta":
            return self.delta(x, active_regions)
        return self._state(x, active_regions)

    def delta(self, x: torch.Tensor, active_regions: Optional[Iterable[str]] = None) -> torch.Tensor:
        """The change the layer makes on this share, exactly 0 on rows it does not update (they
        come back as ``x`` itself), as ``CanvasAttention.delta``."""
        return self._state(x, active_regions) - x

    def _state(self, x: torch.Tensor, active_regions: Optional[Iterable[str]]) -> torch.Tensor:
        attn = self.attn
        n_r, D = self.n_local, attn.d_model
        failure: Optional[BaseException] = None
        try:  # this rank's own checks; with check_inputs every rank learns the outcome first
            refusal = _observed(attn) or _in_rollout(attn)  # dict look-ups: nothing is exchanged for them
            if refusal is not None:
                raise refusal
            check_tensor(type(self).__name__, "x", x, like=next(attn.parameters(), None))
            if x.dim() != 3 or x.shape[1] != n_r or x.shape[2] != D:
                raise ShapeError(f"SequenceParallelCanvasAttention on rank {self.rank} expects its share "
                                 f"(B, {n_r}, {D}) (shard_canvas cuts it), got {tuple(x.shape)}")
            if active_regions is not None:
                active_regions = check_region_names(type(self).__name__, "active_regions", active_regions)
            _check_plan(attn)  # the plan (and the cut) hold the layout's indices and connections as of the build
        except Exception as exc:
            if not self.check_inputs:
                raise
            failure = exc
        if self.check_inputs:
            agree_on_call(self, x, active_regions if failure is None else None, failure)
        soft, other = attn.part_types(active_regions)
        acc = None
        if soft:
            acc = self._softmax_part(x, active_regions)
        if other:
            xs = _gather_packed(x, self.sharding.sizes, self.rank, self.group)  # (N, B, D) packed
            if not self.identity_perm:
                xs = xs.index_select(0, self._index("inv", x.device))
            o = attn.other_types_output(xs.transpose(0, 1), active_regions)
            if o is not None:  # None: no query of those types has a key (nothing to add)
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
        P = self.size
        even = H % P == 0
        t = attn.qkv(x).view(B, n_r, 3, H, dh).transpose(0, 1)  # (n_r, B, 3, H, dh)
        if even:  # one copy: the destination rank's heads outermost
            send = t.reshape(n_r, B, 3, P, H // P, dh).permute(3, 0, 1, 2, 4, 5).reshape(-1)
        else:
            send = torch.cat([t[:, :, :, hb[j]:hb[j + 1]].reshape(-1) for j in range(P)])
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
                           [n_r * B * (hb[j + 1] - hb[j]) * dh for j in range(P)], self.group)
        if even:  # (source rank, n_r, B, its heads, dh) -> (B, n_r, H * dh)
            o = back.view(P, n_r, B, H // P, dh).permute(2, 1, 0, 3, 4).reshape(B, n_r, D)
        else:
            parts = back.split([n_r * B * (hb[j + 1] - hb[j]) * dh for j in range(P)])
            o = torch.cat([p.view(n_r, B, hb[j + 1] - hb[j], dh) for j, p in enumerate(parts)], dim=2)
            o = o.permute(1, 0, 2, 3).reshape(B, n_r, D)
        if bias_weight is not None:
            bias_weight = bias_weight.index_select(0, self._index("local", x.device))
        return attn.project_out(o, bias_weight)


def parallel_layer_names(named: Iterable[Tuple[str, Any]]) -> List[str]:
    """The names of the :class:`SequenceParallelCanvasAttention` wrappers among ``named`` (pairs
    as ``named_modules()`` gives them; ``"<model>"`` for the root): what telemetry, verification,
    rollouts and ``parallelize_canvas`` itself refuse to work on, each with its own reason."""
    return [name or "<model>" for name, m in named if isinstance(m, SequenceParallelCanvasAttention)]


def listed(names: List[str]) -> str:
    """``names`` for a message: the first three, then `` ...`` when there are more."""
    return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")


def parallelize_canvas(module: nn.Module, group: Any = None, *,
                       sharding: Optional[CanvasSharding] = None, check_inputs: bool = True) -> CanvasSharding:
    """Wrap, in place, every canvas attention layer inside ``module`` in a
    :class:`SequenceParallelCanvasAttention` with one shared :class:`CanvasSharding` (cut from the
    first layer's plan).  Parameters stay the same objects (optimizers built before still work).
    Returns the sharding, for :func:`shard_canvas` / :func:`unshard_canvas`.  The caller shards
    the canvas before the first layer and works on shares from there on.  ``check_inputs`` is
    given to every wrapper (see :class:`SequenceParallelCanvasAttention`).  A model that already
    holds sequence-parallel layers is refused (on every rank alike, before any collective)."""
    from canvas_core.runtime.canvas_attention import CanvasAttention

    done = parallel_layer_names(module.named_modules())
    if done:
        raise SequenceParallelError(
            f"parallelize_canvas: {type(module).__name__} is already parallelized: its layer(s) {done[:3]}"
            f"{' ...' if len(done) > 3 else ''} are SequenceParallelCanvasAttention wrappers; call "
            "parallelize_canvas once per model (keep the sharding it returned, or read it from a layer's "
            "`.sharding`)")
    targets = []
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, CanvasAttention):
                targets.append((parent, name, child))
    if not targets:
        hint = (" (it is one itself: parallelize_canvas replaces the layers inside a model; wrap a lone "
                "layer as SequenceParallelCanvasAttention(layer, group))" if isinstance(module, CanvasAttention) else "")
        raise SequenceParallelError(f"parallelize_canvas: {type(module).__name__} contains no CanvasAttention / "
                                    f"AttentionDispatcher layer{hint}")
    group, size, _ = _resolve_group(group, "parallelize_canvas")
    if sharding is None:
        sharding = CanvasSharding.of(targets[0][2].plan, size)
    for parent, name, child in targets:
        setattr(parent, name, SequenceParallelCanvasAttention(child, group, sharding=sharding,
                                                              check_inputs=check_inputs))
    return sharding
