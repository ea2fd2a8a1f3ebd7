"""Span scope: blocks ``i .. j-1`` of a backbone looped together as one recurrent core.

Blocks before ``i`` (the prelude) and from ``j`` on (the coda) run once, as in the backbone.
Position ``i`` of the block list holds a :class:`LoopedSpan` (its ``original`` is block ``i``),
positions ``i+1 .. j-1`` hold :class:`SpanMember` placeholders (each keeps its ``original``
block, whose weights and attention stay where the backbone had them, so topologies install and
state dicts read as in the block scope); a member passes its streams through, because the span at
position ``i`` already ran its block inside every iteration (a forward that reaches a member without
running the span first is refused: the member's block would be skipped).

One iteration ``t`` of the core, for the state ``h`` (one tensor per looped stream, ``(B, N, D_k)``;
the video and the text stream for CogVideoX / Mochi) and the core's input ``x0``::

    u = norm(h) + e_t                  # iter_norm (t >= 1), per-iteration embedding
    u = inject(u, x0)                  # input injection
    y = block_{j-1}( ... block_i(u))   # the core
    h = y (t = 0), h + a_t (y - h) (t >= 1)   -- see loop_engine for a_t

All new parameters start at zero, so with ``gate_init_bias = 0`` the grafted model returns exactly
the backbone's output at every loop count.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from canvas_core.errors import BackboneError, ShapeError
from canvas_core.looping.exit_rows import step_plan, step_rows
from canvas_core.looping.loop_engine import LoopCore, merge_extra_rows
from canvas_core.runtime.func_transforms import in_backward
from canvas_core.looping.wrapper import (_NO_BETA, BlockIO, _beta_targets, _checked_beta, check_reentry,
                                        looped_delta)

__all__ = ["LoopedSpan", "SpanMember", "INJECTIONS", "ITER_NORMS"]

#: how the core's input is fed again at every iteration
INJECTIONS = ("none", "add", "concat")
#: normalisation of the state between iterations
ITER_NORMS = (None, "rms")


class SpanMember(nn.Module):
    """Block ``k`` (``i < k < j``) of a looped span: keeps the block as ``original`` and passes the
    looped streams through (the :class:`LoopedSpan` at position ``i`` runs the block)."""

    def __init__(self, original: nn.Module, position: int, span: "LoopedSpan") -> None:
        super().__init__()
        self.original = original
        self.block_idx = position
        object.__setattr__(self, "_span", span)  # not a submodule: the span owns nothing here
        span._order.link(self, int(position))

    def delta(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``x + member.delta(x)``: zero, the span ran this block already (``(B, N, D)``)."""
        return looped_delta(self, self.original, hidden_states, args, kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        span = self._span
        states, _, _ = span.io.split(args, kwargs)
        # the span names the member it expects next (and the model's forward hook, looping/ungraft.py,
        # unsets _next_member when a forward starts); a recompute in backward (a backbone's own
        # reentrant checkpointing) calls members again, and passes through as the forward did.
        # Identity tests only: an index read here would be guarded on, one graph per member under
        # compile_blocks (the index is read when the refusal is raised)
        order = span._order
        if (span._next_member is None or order.next is not self) and not in_backward():
            raise BackboneError(self._skipped_message())
        after = self._after
        order.next = after
        tpl = span._template
        if after is None:  # the span's last block
            span._next_member = None
            span._template = None  # release the last iteration's extra outputs
        if tpl is None:
            return states[0] if len(states) == 1 else tuple(states)
        return span.io.repack(tpl, states)

    def _skipped_message(self) -> str:
        span = self._span
        return (f"block {self.block_idx} ({type(self.original).__name__}) lies inside the looped span "
                f"{span.loop_scope}, and this forward reached it without running the span from its first "
                f"block {span.start}: the span runs blocks {span.start}..{span.end - 1} together, so this "
                "block would be skipped. Enter the model before the span or after it (or graft a span "
                "that starts where the forward enters)")

    def extra_repr(self) -> str:
        return f"block_idx={self.block_idx}, runs inside the LoopedSpan at block {self._span.start}"


class _MemberOrder:
    """The order in which a forward must reach a span's members: ``next`` is the member expected
    next (None: none), each member's ``_after`` the one following it (None for the last), linked
    by position as the members are built (in any order)."""

    def __init__(self) -> None:
        self.next: Optional[SpanMember] = None
        self.at: dict = {}

    def link(self, member: SpanMember, position: int) -> None:
        object.__setattr__(member, "_after", self.at.get(position + 1))  # not submodules
        before = self.at.get(position - 1)
        if before is not None:
            object.__setattr__(before, "_after", member)
        self.at[position] = member


class LoopedSpan(LoopCore):
    """Blocks ``start .. end-1`` looped as one recurrent core (see the module docstring).

    Args:
        original: block ``start`` (the span keeps it where the backbone had it).
        members: the :class:`SpanMember` of blocks ``start+1 .. end-1`` (in order).
        start, end: the span ``(i, j)``.
        max_loops: trained iteration count (``current_loops`` starts there; more may be set).
        stream_dims: width of every looped stream; ``io``: how the blocks carry them.
        inject: ``"none"``; ``"add"``: ``u + c_k * x0`` with a zero-initialised scalar ``c_k`` per
            stream (the input injection / recall of looped transformers and Deep Thinking,
            arXiv 2311.12424, 2106.04537 and 2202.05826; 2405.17399); ``"concat"``:
            ``u + P_k([u; x0])`` with a zero-initialised ``Linear(2 D_k, D_k)`` (Huginn's
            concatenate-and-project adapter, arXiv 2502.05171, in residual form so it starts
            as the identity).
        iter_embed: per-iteration embeddings ``loop_emb`` ``(max_loops, D)`` (zero-initialised;
            iterations past ``max_loops`` reuse the last), like the block scope and the per-loop
            signals of Relaxed Recursive Transformers (arXiv 2410.20672).
        iter_norm: None, or ``"rms"``: before each re-entry every token of the state is rescaled
            to the RMS of the same token of ``x0`` (parameter-free, keeps the backbone's scale;
            the normalised recurrence of Huginn, arXiv 2502.05171, against hidden-state norms
            that grow with the iteration count).
        update, damping, gate_init_bias: the update rule (see ``loop_engine``).
        sharpening: optional ``SharpeningSchedule`` applied to the core's attention per iteration.
        batched, unbatched: names of block arguments the adaptive exit splits with the rows of
            the samples still running, and names it passes whole (rotary tables); see
            :func:`~canvas_core.looping.loop_engine.row_plan` for undeclared ones. With adaptive
            exit the blocks' extra outputs with one row per sample come from each sample's last
            iteration, any other from the last iteration of the whole batch.
    """

    def __init__(self, original: nn.Module, members: Sequence[SpanMember], start: int, end: int,
                 max_loops: int, stream_dims: Sequence[int], io: BlockIO, *, inject: str = "none",
                 iter_embed: bool = True, iter_norm: Optional[str] = None, update: str = "gated",
                 damping: float = 0.5, gate_init_bias: float = 0.0,
                 use_gradient_checkpointing: bool = True, sharpening: Optional[Callable] = None,
                 unbatched: Sequence[str] = ("image_rotary_emb",), batched: Sequence[str] = (),
                 scope_name: str = "") -> None:
        _check_span_options(f"LoopedSpan ({start}, {end})", inject, iter_norm, iter_embed)
        super().__init__(max_loops, gate_init_bias, update, damping, use_gradient_checkpointing)
        self.original = original
        self.block_idx = start
        self.start, self.end = int(start), int(end)
        self.loop_scope = scope_name or f"({start}, {end})"
        self.io = io
        self.stream_dims = tuple(int(d) for d in stream_dims)
        self.embed_dim = self.stream_dims[0]
        self.inject = inject
        self.iter_norm = iter_norm
        self.unbatched = tuple(unbatched)
        self.batched = tuple(batched)
        self.sharpening = sharpening
        object.__setattr__(self, "_members", list(members))
        object.__setattr__(self, "_holders", [])  # every block position (canvas_fn of topologies)
        self._template: Any = None
        # the block the last span forward hands over to (None: a forward must run the span first)
        self._next_member: Optional[int] = None
        self._order = _MemberOrder()  # which member comes next (identity, see SpanMember.forward)
        # names of the block's arguments after the streams, read here once: filled lazily in the
        # first forward, the compiled graph of that call would be guarded on it being unset and
        # never reused
        self._arg_names: List[str] = _arg_names_after(original, len(io.streams))
        if iter_embed:
            for k, d in enumerate(self.stream_dims):
                name = "loop_emb" if k == 0 else f"loop_emb_{k}"
                self.register_parameter(name, nn.Parameter(torch.zeros(max_loops, d)))
        if inject == "add":
            self.inject_gate = nn.Parameter(torch.zeros(len(self.stream_dims)))
        elif inject == "concat":
            self.inject_proj = nn.ModuleList()
            for d in self.stream_dims:
                lin = nn.Linear(2 * d, d)
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
                self.inject_proj.append(lin)

    # --- structure ---------------------------------------------------------------------------------
    def core_blocks(self) -> List[nn.Module]:
        """The backbone blocks of the core, in order."""
        return [self.original] + [m.original for m in self._members]

    def members(self) -> List[SpanMember]:
        return list(self._members)

    def _extra_loop_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        out = []
        for k, h in enumerate(self._holders):
            fn = h._modules.get("canvas_fn") if isinstance(h, nn.Module) else None
            if fn is not None:
                out += [(f"block{k}.canvas_fn.{n}", p) for n, p in fn.named_parameters()]
        return out

    def set_sharpening(self, schedule: Optional[Callable[[int], float]]) -> None:
        if schedule is not None and not any(_beta_targets(b) for b in self.core_blocks()):
            raise BackboneError(
                f"span {self.loop_scope} has no attention exposing an inverse temperature `beta`: {_NO_BETA}")
        self.sharpening = schedule

    # --- execution -----------------------------------------------------------------------------------
    def _embedding(self, k: int, t: int) -> Optional[torch.Tensor]:
        # getattr, not self._parameters: a DataParallel replica holds its copies as attributes
        e = getattr(self, "loop_emb" if k == 0 else f"loop_emb_{k}", None)
        return None if e is None else e[min(t, e.shape[0] - 1)]

    def _names(self, n_rest: int) -> List[str]:
        names = list(self._arg_names)
        return names[:n_rest] + [""] * max(0, n_rest - len(names))

    def _run_core(self, beta: Optional[float], rest_args: list, rest_kwargs: dict, *u: torch.Tensor):
        # beta comes from the forward: a recompute in backward must not read a schedule changed since
        targets = []
        if beta is not None:
            for b in self.core_blocks():
                targets += _beta_targets(b)
        old = [x.beta for x in targets]
        if targets:
            for x in targets:
                x.beta = beta
        try:
            states = u
            out = None
            for b in self.core_blocks():
                out = b(*states, *rest_args, **rest_kwargs)
                states = self.io.states_of(out)
            return out
        finally:
            for x, b in zip(targets, old):
                x.beta = b

    def delta(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``x + span.delta(x)``: the change the looped span makes, ``(B, N, D)``, for blocks that
        are canvas layers (see :func:`~canvas_core.looping.wrapper.looped_delta`)."""
        return looped_delta(self, self.original, hidden_states, args, kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the core ``current_loops`` times (fewer per sample with ``exit_tol``). Called by the
        backbone in place of block ``start``, with its arguments (streams ``(B, N, D_k)`` first)."""
        if self.__dict__.get("_is_replica"):
            raise BackboneError(
                f"span {self.loop_scope} runs in a DataParallel replica (DataParallel over more than "
                "one device), and a span runs the blocks of its members, which a replica cannot "
                "reach: it would run the original blocks (their device, their weights). Use "
                "DistributedDataParallel (one model per process), DataParallel over one device, or "
                "graft with scope='block'")
        states, rest_args, rest_kwargs = self.io.split(args, kwargs)
        for name, s, d in zip(self.io.streams, states, self.stream_dims):
            if s.dim() < 3 or s.shape[-1] != d:
                raise ShapeError(
                    f"span {self.loop_scope}: looped input {name!r} must be (B, N, {d}) hidden "
                    f"states, got shape {tuple(s.shape)}")
        B = states[0].shape[0]
        names = self._names(len(rest_args))
        use_ckpt = self.use_gradient_checkpointing and self.training and torch.is_grad_enabled()
        x0 = states
        last: dict = {}
        plan = step_plan(names, rest_args, rest_kwargs, B, self.batched, self.unbatched,
                         f"span {self.loop_scope}", self.exit_tol > 0 and B > 1)

        def run(t: int, h: Tuple[torch.Tensor, ...], rows: Optional[torch.Tensor]):
            if rows is None:
                ra, rk, xr = rest_args, rest_kwargs, x0
            else:
                ra, rk = step_rows(names, rest_args, rest_kwargs, plan, rows, B)
                xr = tuple(s.index_select(0, rows) for s in x0)
            u = []
            for k, (s, x) in enumerate(zip(h, xr)):
                if t >= 1 and self.iter_norm == "rms":
                    s = s * (_rms(x) / (_rms(s) + 1e-6)).to(s.dtype)
                e = self._embedding(k, t)
                if e is not None:
                    s = s + e.to(s.dtype)
                if self.inject == "add":
                    s = s + self.inject_gate[k].to(s.dtype) * x
                elif self.inject == "concat":
                    s = s + self.inject_proj[k](torch.cat([s, x], dim=-1).to(self.inject_proj[k].weight.dtype)).to(s.dtype)
                u.append(s)
            beta = None if self.sharpening is None else _checked_beta(self.sharpening, t)
            if use_ckpt:
                out = checkpoint(self._run_core, beta, ra, rk, *u, use_reentrant=False)
            else:
                out = self._run_core(beta, ra, rk, *u)
            y = self.io.states_of(out)
            if t == 0 and self.current_loops > 1:
                check_reentry(f"span {self.loop_scope}", self.io.streams, h, y,
                              "loop a span whose blocks keep the width (or set_loops(model, 1))")
            last["out"] = out if rows is None else merge_extra_rows(last["out"], out, rows, B, len(y))
            return y

        h = self.iterate(x0, run)
        ret = self.io.repack(last["out"], h)
        self._template = ret if self._members and not isinstance(ret, torch.Tensor) else None
        self._next_member = self.start + 1 if self._members else None
        self._order.next = self._order.at.get(self.start + 1)
        return ret


def _check_span_options(where: str, inject: Any, iter_norm: Any, iter_embed: Any) -> None:
    """The span's own options, as ``graft_looped_blocks`` checks them (for a span built directly)."""
    if inject not in INJECTIONS:
        raise BackboneError(f"{where}: inject={inject!r} is not an injection; choose one of {list(INJECTIONS)}")
    if iter_norm not in ITER_NORMS:
        raise BackboneError(f"{where}: iter_norm={iter_norm!r} is not a norm; choose one of {list(ITER_NORMS)}")
    if not isinstance(iter_embed, bool):
        raise BackboneError(f"{where}: iter_embed={iter_embed!r} must be True or False")


def _arg_names_after(block: nn.Module, n_streams: int) -> List[str]:
    """Names of ``block``'s forward parameters after its ``n_streams`` looped streams (empty when
    the signature cannot be read)."""
    try:
        params = list(inspect.signature(block.forward).parameters)
    except (TypeError, ValueError):
        params = []
    return params[n_streams:]


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.float().pow(2).mean(-1, keepdim=True).sqrt()
