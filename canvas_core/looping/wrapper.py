"""`LoopedBlockWrapper`: run one transformer block several times with learned loop signals.

Update rule for the looped state ``h`` (one tensor per stream, each ``(B, N, D_stream)``)::

    h_1     = block(h_0 + e_0)                          # loop 0: the block as-is (e_0 = 0 at init)
    h_{i+1} = h_i + g_i * (block(h_i + e_i) - h_i)      # loops i >= 1: through gate g_i (0 at init)

``e_i`` are per-iteration embeddings (zero-initialised) and ``g_i`` scalar gates
(initialised to ``gate_init_bias``, 0 by default), so at initialisation the wrapped block
returns exactly what the original block returns, at *every* loop count (a gate of exactly 0
returns ``h_i`` itself, even when the extra pass overflows to ``inf`` in float16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from canvas_core.errors import BackboneError, CanvasTypeError, ShapeError
from canvas_core.looping.loop_engine import REPLICA_NOTE, ReplicaNote, gated_update, note_replica_record, real_number
from canvas_core.runtime.func_transforms import in_backward
from canvas_core.schema._validate import is_int

__all__ = ["BlockIO", "LoopedBlockWrapper", "ForwardMark", "check_reentry"]

#: why sharpening cannot reach a block, and what to do (the adapters install canvas attention in
#: the attention modules they know; a block that computes attention inline keeps its own)
_NO_BETA = ("sharpening scales the attention logits of canvas-core attention, which "
            "graft_looped_blocks' adapter installs only in the attention modules it knows (timm's "
            "Attention, diffusers' attention processors); this block computes its attention another "
            "way (e.g. timm's ParallelScalingBlock does it inline). Graft without sharpening=, or give "
            "the block canvas-core attention modules")


@dataclass(frozen=True)
class BlockIO:
    """How a block carries the looped state through its call.

    ``streams`` names the block's first parameters that are looped (e.g.
    ``("hidden_states",)`` for a ViT block, ``("hidden_states", "encoder_hidden_states")`` for a
    CogVideoX / Mochi block).  They are read positionally or by keyword, passed back positionally
    in that order, and the block must return either a tensor (one stream) or a tuple whose first
    ``len(streams)`` entries are the new streams.
    """

    streams: Tuple[str, ...] = ("hidden_states",)

    def split(
        self, args: Sequence[Any], kwargs: dict
    ) -> Tuple[Tuple[torch.Tensor, ...], list, dict]:
        args, kwargs = list(args), dict(kwargs)
        states = []
        for name in self.streams:
            if args:
                states.append(args.pop(0))
            elif name in kwargs:
                states.append(kwargs.pop(name))
            else:
                raise CanvasTypeError(
                    f"looped block called without its looped input {name!r}; pass it as the first "
                    f"positional arguments or as keyword {name!r} (streams: {list(self.streams)})"
                )
        for name, s in zip(self.streams, states):
            if not isinstance(s, torch.Tensor):
                raise CanvasTypeError(
                    f"looped input {name!r} must be a torch.Tensor, got {type(s).__name__}"
                )
            if not s.is_floating_point():
                raise ShapeError(
                    f"looped input {name!r} must be a floating tensor (hidden states), got {s.dtype}; "
                    "pass the embedded hidden states, e.g. hidden_states.float()"
                )
        return tuple(states), args, kwargs

    def states_of(self, out: Any) -> Tuple[torch.Tensor, ...]:
        n = len(self.streams)
        if isinstance(out, torch.Tensor):
            if n != 1:
                raise BackboneError(
                    f"block returned one tensor but {n} looped streams {list(self.streams)} were "
                    "declared; give the wrapper a BlockIO matching the block's outputs"
                )
            return (out,)
        if isinstance(out, (tuple, list)) and len(out) >= n:
            return tuple(out[:n])
        raise BackboneError(
            f"block returned {type(out).__name__}; expected a tensor or a tuple whose first {n} "
            f"entries are the streams {list(self.streams)}"
        )

    def repack(self, out: Any, states: Tuple[torch.Tensor, ...]) -> Any:
        if isinstance(out, torch.Tensor):
            return states[0]
        rest = tuple(out[len(states) :])
        packed = tuple(states) + rest
        return list(packed) if isinstance(out, list) else packed


def _beta_targets(block: nn.Module) -> List[Any]:
    """Objects inside ``block`` whose attention honours an inverse temperature ``beta``:
    canvas-core attention modules and adapter-installed processors expose a float ``beta``."""
    found: List[Any] = []
    for m in block.modules():
        if m is block:
            continue
        if hasattr(m, "beta") and getattr(m, "canvas_beta", True):
            b = m.beta  # canvas-core attention modules use None for "1.0"
            if b is None or (isinstance(b, (int, float)) and not isinstance(b, bool)):
                found.append(m)
        proc = getattr(m, "processor", None)
        if proc is not None and getattr(proc, "canvas_beta", False):
            found.append(proc)
    return found


class ForwardMark:
    """Which model forward a block's record belongs to (``loop_stats`` reports the latest only).

    ``graft_looped_blocks`` gives the grafted model one, shared by its looped parts (a few ints:
    a deep copy or pickle of one part carries no model): the model's forward hooks
    (``looping/ungraft.py``) start forward ``n + 1`` when the model is called and tell the blocks
    they run inside a model call (``depth``, 1 or 0), where every block gets the call's number
    whatever order it runs in. Outside a call (timm's ``forward_features``, blocks called one by
    one) a block starts a new forward when it already ran in the current one or its index is
    below the last block's (``last``), as every block of a wrapper built without a graft does."""

    def __init__(self) -> None:
        self.n, self.depth, self.last = 0, 0, -1

    def stamp(self, block_idx: int, prev: Optional[int]) -> int:
        """The forward number of block ``block_idx`` running now (``prev``: its last record's)."""
        if self.depth <= 0 and (prev == self.n or block_idx < self.last):
            self.n += 1
        self.last = block_idx
        return self.n


#: the forward mark of wrappers built without ``graft_looped_blocks``
_UNGRAFTED = ForwardMark()


class _DefaultWidth(int):
    """The default ``embed_dim`` (256, canvas-engineering's), told apart from the same number
    passed on purpose: with ``stream_dims`` given, only an explicit ``embed_dim`` must agree."""


def _finite_gate(value: Any, block_idx: int) -> float:
    """``gate_init_bias`` as a finite float (numpy scalars, 0-d tensors too), else ``BackboneError``."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # a 0-d tensor or array: its number
        try:
            value = value.item()
        except RuntimeError:  # a meta tensor holds no number
            pass
    f = real_number(value)
    if f is not None and math.isfinite(f):
        return f
    raise BackboneError(
        f"LoopedBlockWrapper (block {block_idx}): gate_init_bias must be a finite number (0.0 keeps "
        f"the block identical to the backbone at every loop count), got {value!r}")


def _bind_first_stream(module: "LoopedBlockWrapper", args: tuple, kwargs: dict):
    """Forward pre-hook: ``forward(hidden_states, *args, **kwargs)`` names its first stream
    ``hidden_states`` (canvas-engineering's signature); a call giving the first stream by the
    keyword of its ``io`` name (e.g. ``x=``) is rebound to it, and a call without it raises a
    :class:`CanvasTypeError` that names the stream."""
    if args or "hidden_states" in kwargs:
        return None
    name = module.io.streams[0]
    if name not in kwargs:
        raise CanvasTypeError(
            f"looped block called without its looped input {name!r}; pass it as the first "
            f"positional argument or as keyword {name!r} (streams: {list(module.io.streams)})"
        )
    kwargs = dict(kwargs)
    return (kwargs.pop(name),), kwargs


class LoopedBlockWrapper(nn.Module):
    """Wrap any transformer block for looped execution (see the module docstring for the rule).

    Args:
        original: the block to loop (kept as ``self.original``; freeze it or not, your choice).
        block_idx: index of the block in its model (logging, checkpoints).
        max_loops: maximum number of iterations (``current_loops`` starts here).
        embed_dim: width ``D`` of the first looped stream (last dim of ``hidden_states``).
        gate_init_bias: initial value of the gates ``g_1 .. g_{L-1}``. 0 (default) makes the
            grafted model identical to the backbone at every loop count; any other value blends.
        use_gradient_checkpointing: recompute each loop's activations in backward (per loop,
            ``use_reentrant=False``), only while training with grad enabled.
        io: how the block carries its looped streams (default: one stream, first argument).
        stream_dims: width of every stream when there are several (default ``(embed_dim,)``).
        sharpening: optional ``SharpeningSchedule`` (loop index -> attention inverse temperature).

    Parameters: ``loop_emb`` ``(max_loops, embed_dim)``, one ``loop_emb_<k>`` per extra stream,
    and ``loop_gate`` ``(max_loops - 1,)``.
    """

    def __init__(
        self,
        original: nn.Module,
        block_idx: int = 0,
        max_loops: int = 4,
        embed_dim: int = _DefaultWidth(256),
        gate_init_bias: float = 0.0,
        use_gradient_checkpointing: bool = True,
        *,
        io: Optional[BlockIO] = None,
        stream_dims: Optional[Sequence[int]] = None,
        sharpening: Optional[Callable[[int], float]] = None,
    ) -> None:
        super().__init__()
        if not isinstance(original, nn.Module):
            raise CanvasTypeError(
                f"LoopedBlockWrapper wraps an nn.Module, got {type(original).__name__}"
            )
        if not is_int(max_loops) or max_loops < 1:  # numpy integers too, as the schema takes them
            raise BackboneError(f"max_loops must be an int >= 1, got {max_loops!r}")
        if not is_int(embed_dim) or embed_dim < 1:
            raise BackboneError(f"embed_dim must be a positive int, got {embed_dim!r}")
        if not is_int(block_idx):  # any int, as canvas-engineering (where it is for logging) takes it
            raise BackboneError(f"block_idx must be an int (the block's index in its model), got {block_idx!r}")
        explicit_width = type(embed_dim) is not _DefaultWidth
        max_loops, embed_dim, block_idx = int(max_loops), int(embed_dim), int(block_idx)
        from canvas_core.schema.limits import check_size

        check_size("loops", max_loops, f"LoopedBlockWrapper (block {block_idx}) max_loops")
        check_size("width", embed_dim, f"LoopedBlockWrapper (block {block_idx}) embed_dim")
        gate_init_bias = _finite_gate(gate_init_bias, block_idx)
        if io is not None and not isinstance(io, BlockIO):
            raise CanvasTypeError(
                f"LoopedBlockWrapper (block {block_idx}): io must be a BlockIO naming the looped "
                f"streams, e.g. BlockIO(('hidden_states',)), got {type(io).__name__}")
        self.io = io or BlockIO()
        if not self.io.streams:
            raise BackboneError(
                f"LoopedBlockWrapper (block {block_idx}): io=BlockIO(()) names no looped stream; name "
                "at least the hidden states, e.g. BlockIO(('hidden_states',))")
        dims = (
            tuple(stream_dims) if stream_dims is not None else (embed_dim,) * len(self.io.streams)
        )
        if len(dims) != len(self.io.streams):
            raise BackboneError(
                f"stream_dims {dims} must give one width per looped stream {list(self.io.streams)}"
            )
        for name, d in zip(self.io.streams, dims):
            if not is_int(d) or d < 1:
                raise BackboneError(
                    f"LoopedBlockWrapper (block {block_idx}): stream_dims gives stream {name!r} the "
                    f"width {d!r}; each width must be an int >= 1 (the last dim of that stream)")
            check_size("width", int(d), f"LoopedBlockWrapper (block {block_idx}) stream_dims")
        dims = tuple(int(d) for d in dims)
        if stream_dims is not None and explicit_width and dims[0] != embed_dim:
            raise BackboneError(
                f"LoopedBlockWrapper (block {block_idx}): embed_dim={embed_dim} but stream_dims[0]="
                f"{dims[0]}; both give the width of the first stream {self.io.streams[0]!r}: make "
                "them equal, or leave embed_dim out")
        self.original = original
        self.block_idx = block_idx
        self.max_loops = max_loops
        self.embed_dim = dims[0]
        self.stream_dims = dims
        self.use_gradient_checkpointing = use_gradient_checkpointing
        self.current_loops = max_loops
        self.schema_hash = ""  # canvas schema the loops belong to (checked by loop checkpoints)
        self.loop_emb = nn.Parameter(torch.zeros(max_loops, dims[0]))
        for k, d in enumerate(dims[1:], start=1):
            self.register_parameter(f"loop_emb_{k}", nn.Parameter(torch.zeros(max_loops, d)))
        self.loop_gate = nn.Parameter(torch.full((max_loops - 1,), float(gate_init_bias)))
        self.sharpening = None
        if sharpening is not None:
            self.set_sharpening(sharpening)
        self.register_forward_pre_hook(_bind_first_stream, with_kwargs=True)
        setattr(self, REPLICA_NOTE, ReplicaNote())  # loop_counts refuses a replica's forward

    # --- configuration -------------------------------------------------------------------------
    def set_loops(self, n: int) -> None:
        """Set the number of iterations used by ``forward`` (curriculum).

        More than ``max_loops`` is clamped to ``max_loops``, as in canvas-engineering (a
        curriculum may overshoot); ``n < 1`` or a non-integer raises ``BackboneError`` (zero
        loops would silently skip the backbone block)."""
        if not is_int(n) or n < 1:
            raise BackboneError(
                f"block {self.block_idx}: loops must be an int >= 1 (at most {self.max_loops} are run), got {n!r}"
            )
        n = int(n)
        self.current_loops = min(n, self.max_loops)

    def set_sharpening(self, schedule: Optional[Callable[[int], float]]) -> None:
        """Apply ``schedule(loop_idx)`` as the attention inverse temperature of each loop."""
        if schedule is not None:
            if not callable(schedule):
                raise CanvasTypeError(
                    f"sharpening must be a SharpeningSchedule or callable(loop_idx) -> beta, got "
                    f"{type(schedule).__name__}"
                )
            if not _beta_targets(self.original):
                raise BackboneError(
                    f"block {self.block_idx} ({type(self.original).__name__}) has no attention "
                    f"exposing an inverse temperature `beta`: {_NO_BETA}"
                )
        self.sharpening = schedule

    def loop_parameters(self) -> List[nn.Parameter]:
        """The wrapper's own parameters (embeddings and gates), not the block's."""
        return [p for _, p in self.named_loop_parameters()]

    def named_loop_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        own = [(n, p) for n, p in self._parameters.items() if p is not None]
        # the gated modules of a canvas topology's non-softmax types (install_topology)
        fn = self._modules.get("canvas_fn")
        if fn is not None:
            own += [(f"canvas_fn.{n}", p) for n, p in fn.named_parameters()]
        return own

    def trainable_params(self) -> int:
        """Number of loop-specific parameters that require grad."""
        return sum(p.numel() for p in self.loop_parameters() if p.requires_grad)

    def extra_repr(self) -> str:
        return (
            f"block_idx={self.block_idx}, max_loops={self.max_loops}, "
            f"current_loops={self.current_loops}, embed_dim={self.embed_dim}, stream_dims={self.stream_dims}, "
            f"checkpointing={self.use_gradient_checkpointing}, trainable_params={self.trainable_params()}"
        )

    # --- execution -----------------------------------------------------------------------------
    def _embeddings(self) -> List[torch.Tensor]:
        return [self.loop_emb] + [
            getattr(self, f"loop_emb_{k}") for k in range(1, len(self.stream_dims))
        ]

    def _run_once(self, beta: Optional[float], rest_args: list, rest_kwargs: dict, *states: torch.Tensor):
        # beta comes from the forward: a recompute in backward must not read a schedule changed since
        targets = _beta_targets(self.original) if beta is not None else []
        old = [t.beta for t in targets]
        if targets:
            for t in targets:
                t.beta = beta
        try:
            return self.original(*states, *rest_args, **rest_kwargs)
        finally:
            for t, b in zip(targets, old):
                t.beta = b

    def delta(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """For a block that is a canvas layer called as ``x + block.delta(x)``: the change the
        looped block makes, ``(B, N, D)`` (see :func:`looped_delta`)."""
        return looped_delta(self, self.original, hidden_states, args, kwargs)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """Run the block ``current_loops`` times with the learned loop embeddings and gates.

        ``hidden_states`` is the first looped stream (``(B, N, D)``); with several streams
        (``io``) the others follow positionally or by keyword. Every other argument is passed
        through to the block unchanged. A first stream named other than ``hidden_states`` in
        ``io`` may also be given by its own keyword (``wrapper(x=x)``)."""
        states, rest_args, rest_kwargs = self.io.split((hidden_states,) + args, kwargs)
        embs = self._embeddings()
        for name, s, d in zip(self.io.streams, states, self.stream_dims):
            if s.dim() < 3:
                raise ShapeError(
                    f"block {self.block_idx}: looped input {name!r} must be (B, N, {d}) hidden "
                    f"states, got shape {tuple(s.shape)}"
                )
            if s.shape[-1] != d:
                raise ShapeError(
                    f"block {self.block_idx}: looped input {name!r} has last dim {s.shape[-1]} "
                    f"but the loop embeddings have width {d}; graft with the model's hidden size"
                )
        use_ckpt = self.use_gradient_checkpointing and self.training and torch.is_grad_enabled()
        out = None
        trace: list = []
        for i in range(self.current_loops):
            inp = tuple(s + e[i].to(s.dtype) for s, e in zip(states, embs))
            beta = None if self.sharpening is None else _checked_beta(self.sharpening, i)
            if use_ckpt:
                out = checkpoint(
                    self._run_once, beta, rest_args, rest_kwargs, *inp, use_reentrant=False
                )
            else:
                out = self._run_once(beta, rest_args, rest_kwargs, *inp)
            new = self.io.states_of(out)
            prev = states
            if i == 0:
                if self.current_loops > 1:
                    check_reentry(self._where, self.io.streams, states, new,
                                  "graft only blocks that keep the width (or set_loops(model, 1))")
                states = new
            else:
                g = self.loop_gate[i - 1]
                # at g == 0 exactly the state (an overflowing extra loop cannot give NaN)
                states = tuple(gated_update(s, n, g.to(s.dtype)) for s, n in zip(states, new))
            trace.append((prev, states))
        self._record(trace)
        return self.io.repack(out, states)

    def _where(self) -> str:
        """This block, for an error message. Built only when one is raised: read in the traced
        forward, ``block_idx`` would be guarded on, so ``compile_blocks`` compiled one graph per
        block (recompile limit hit past 8 blocks) instead of one for all."""
        return f"block {self.block_idx} ({type(self.original).__name__})"

    def _record(self, trace: list) -> None:
        """Keep the per-iteration diagnostics of this forward (``canvas_core.loop_stats``,
        ``loop_counts``) as device tensors, under ``torch.compile`` too (as the span and model
        loops do: an attribute set in a compiled forward is replayed after its graph, so the
        record is always the last forward's; skipping it left an eager forward's record in place,
        read back as the compiled one's). The batch size is read at report time from the
        per-sample ``counts`` tensor, not taken as a Python int here (which would specialise a
        dynamic batch dimension)."""
        from canvas_core.looping.loop_engine import _batch_mean, _exit_stats, _token_rms

        if not torch.compiler.is_compiling() and in_backward():
            return  # a recompute in backward (the backbone's checkpointing): the forward's record stands
        note_replica_record(self, "_loop_trace")
        with torch.no_grad():
            first = trace[0][1][0]
            rel, norm, prev_sq = [], [], None
            for p, c in trace:  # each state's norm once: a loop's prev is the last loop's state
                r, prev_sq, rms = _exit_stats(p, c, prev_sq)
                rel.append(_batch_mean(r))
                norm.append(_batch_mean(rms if rms is not None else _token_rms(c)))
            self._loop_trace = {
                "counts": torch.full(first.shape[:1], len(trace), dtype=torch.long, device=first.device),
                "rel_change": rel, "state_norm": norm, "forward": self._forward_stamp(),
            }

    def _forward_stamp(self) -> Optional[int]:
        """Which model forward this record belongs to (see :class:`ForwardMark`), for ``loop_stats``
        to leave out the blocks an earlier forward ran. None under ``torch.compile`` (a counter read
        in the graph would be guarded on, recompiling every forward): the model's forward hook
        drops the records of the forward before instead."""
        if torch.compiler.is_compiling():
            return None
        mark = self.__dict__.get("_forward_mark", _UNGRAFTED)
        prev = self.__dict__.get("_loop_trace")
        return mark.stamp(self.block_idx, prev.get("forward") if prev is not None else None)


def _checked_beta(schedule: Callable[[int], float], loop_idx: int) -> float:
    """``schedule(loop_idx)`` as a float; a non-finite or negative inverse temperature (a sharpening
    schedule gone wrong) is a ``BackboneError`` naming the loop, before any attention runs on it.

    Written with comparisons only (``0 <= beta < inf`` is false for NaN too): under
    ``torch.compile`` a schedule changed since the first compile gives a symbolic ``beta``, which
    comparisons guard on (every valid value passes them, so no recompile) and ``math.isfinite``
    cannot take (it failed ``fullgraph=True`` and broke the graph otherwise)."""
    value = schedule(loop_idx)
    try:
        beta = float(value)
    except (TypeError, ValueError):
        raise BackboneError(f"the sharpening schedule returned {value!r} for loop {loop_idx}; it must return a "
                            "finite number >= 0 (an inverse temperature)") from None
    if not (0.0 <= beta < float("inf")):
        raise BackboneError(f"the sharpening schedule returned beta={beta} for loop {loop_idx}; it must be a "
                            "finite number >= 0 (an inverse temperature)")
    return beta


def check_reentry(where: Union[str, Callable[[], str]], streams: Sequence[str], inp: Sequence[torch.Tensor],
                  out: Sequence[torch.Tensor], fix: str) -> None:
    """After the first pass of a looped part: each stream's output must have its input's shape, since
    it is the next pass's input; a ``ShapeError`` naming ``where`` and the stream otherwise.

    ``where`` may be a callable returning the name, called only on failure: a name formatted from
    per-block attributes on every call would make ``torch.compile`` guard on them."""
    for name, a, b in zip(streams, inp, out):
        if not isinstance(b, torch.Tensor) or b.shape != a.shape:
            got = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            where = where if isinstance(where, str) else where()
            raise ShapeError(
                f"{where}: looped stream {name!r} came in with shape {tuple(a.shape)} and came out with "
                f"{got}, so its output cannot re-enter as the next iteration's input; {fix}")


def looped_delta(part: nn.Module, original: nn.Module, hidden_states: Any, args: Any, kwargs: Any) -> torch.Tensor:
    """``part(hidden_states, ...) - hidden_states``: the ``delta`` of a looped part whose block is
    a canvas layer (its forward returns the new state), so a model written as
    ``x = x + block.delta(x)`` keeps working once grafted. A block without ``delta`` keeps
    raising ``AttributeError``."""
    if not callable(getattr(original, "delta", None)):
        raise AttributeError(f"'{type(part).__name__}' object has no attribute 'delta' (its block, a "
                             f"{type(original).__name__}, has none)")
    out = part(hidden_states, *args, **kwargs)
    if not isinstance(out, torch.Tensor) or not isinstance(hidden_states, torch.Tensor) or out.shape != hidden_states.shape:
        from canvas_core.errors import ShapeError

        raise ShapeError(f"{type(part).__name__}.delta: the looped block returned "
                         f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}, not a "
                         "state of its input's shape; call the block itself")
    return out - hidden_states
