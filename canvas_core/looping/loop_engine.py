"""The iteration shared by the span and model loop scopes: update rule, test-time depth,
per-sample adaptive exit on the active rows only, and per-iteration diagnostics.

A loop part holds a state ``h`` (a tuple of tensors, each ``(B, ...)``; one per looped stream)
and a step ``run(t, h_rows, rows) -> y_rows``. One forward runs::

    h = x0
    for t in range(n):
        y = run(t, h)
        h = y                      if t == 0
        h = h + a_t * (y - h)      otherwise

``a_t`` depends on ``update``: ``"gated"`` (a learned scalar per iteration, ``loop_gate``, started
at ``gate_init_bias``: 0 keeps the model identical to its backbone at every loop count; the
gated residual of Relaxed Recursive / retrofitted-recurrence grafts, arXiv 2410.20672 and
2511.07384), ``"damped"`` (a fixed ``damping`` in (0, 1], no parameter: the damped sub-steps of
training-free looping, arXiv 2605.23872) or ``"replace"`` (``a_t = 1``: the plain recurrence
``h <- core(h)`` of Huginn and Ouro, arXiv 2502.05171 and 2510.25741; not identical to the
backbone beyond one loop).

Adaptive exit (``exit_tol > 0``): after iteration ``t >= 1`` a sample whose relative change
``||h_t - h_{t-1}|| / ||h_{t-1}||`` (norm over all its streams; :func:`_exit_stats`: NaN for a
state that is not finite, never "converged") is below ``exit_tol`` stops; later
iterations run the step on the remaining rows only (``index_select``), so finished samples cost
nothing. ``exit_tol = 0`` never stops early and runs the very same code path as fixed depth.

The other arguments of the step (a block's timestep embedding, a mask, rotary tables) go with
those rows by declaration, never by a guess from their shape: an argument named in ``batched``
(the adapter's ``batched_args`` plus ``graft_looped_blocks(batched_args=)``) has its tensors of
first dim ``B`` indexed (inside tuples, lists, dicts and dataclass instances too), one named in
``unbatched`` (``unbatched_args``) is passed whole, an ``nn.Parameter`` is always passed whole,
and so is an undeclared argument holding no tensor of first dim ``B``. An undeclared argument
that holds one, or a declared one holding one where it cannot be cut (inside an object that is
not a dataclass), is refused (:func:`row_plan`) at the first forward with ``exit_tol > 0``; see
:mod:`canvas_core.looping.exit_rows`.

At a gate ``a_t`` of exactly zero the update returns ``h`` itself even when the step overflowed
(``inf`` in float16): a non-finite ``y - h`` is taken as 0 there, instead of ``h + 0 * (inf - h)
= NaN`` (:func:`gated_update`).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from canvas_core.errors import BackboneError, CanvasTypeError
from canvas_core.looping.exit_rows import index_rows, row_plan
from canvas_core.schema._validate import is_int

__all__ = ["LoopCore", "UPDATES", "index_rows", "row_plan", "gated_update", "check_loops", "check_exit_tol",
           "real_number", "ReplicaNote", "note_replica_record", "refuse_replica_record",
           "REPLICA_NOTE"]

UPDATES = ("gated", "damped", "replace")


def check_loops(n: Any, where: str) -> int:
    if not is_int(n) or n < 1:  # numpy integers too, as the schema takes them
        raise BackboneError(
            f"{where}: n (the loop count) must be an int >= 1, got {n!r}; one loop runs the "
            "backbone once, so pass n=1 for the plain model"
        )
    n = int(n)
    from canvas_core.schema.limits import check_size

    check_size("loops", n, f"{where} n")  # a span runs every one of them: refuse a runaway count
    return n


def real_number(value: Any) -> Optional[float]:
    """``value`` as a float when it is a real number (Python or numpy), else None (``bool``
    included). A number that ``float()`` cannot convert (an int past 1.8e308, a huge ``Fraction``)
    gives ``inf`` and NaN stays NaN: the callers' "finite" checks (``gate_init_bias``, ``exit_tol``,
    the schedules' numbers) refuse both, each with its own message."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (OverflowError, ValueError, TypeError):
        return float("inf")


def check_exit_tol(exit_tol: Any, where: str) -> float:
    value = real_number(exit_tol)
    if value is None or not (value >= 0 and value != float("inf")):
        raise BackboneError(
            f"{where}: exit_tol must be a finite number >= 0 (0 = fixed depth; e.g. 1e-3 stops a "
            f"sample once its state changes by less than 0.1% per iteration), got {exit_tol!r}"
        )
    return value


#: where a looped part keeps its :class:`ReplicaNote`
REPLICA_NOTE = "_canvas_replica_note"


class ReplicaNote:
    """Shared by a looped part and its ``DataParallel`` replicas (``replicate`` gives each replica
    a shallow copy of the part's ``__dict__``, so this object is the same in all of them). A
    replica's forward leaves here the record the part held when it was copied; while the part
    still holds that very record, its last forward ran in replicas, whose records went with them."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: Optional[Tuple[Any]] = None


def note_replica_record(part: nn.Module, attr: str) -> None:
    """Called by a part's forward before it replaces its record ``attr``: in a replica, tell the
    part (through its :class:`ReplicaNote`) that this forward's record will not reach it."""
    if getattr(part, "_is_replica", False):
        note = getattr(part, REPLICA_NOTE, None)
        if isinstance(note, ReplicaNote):
            note.seen = (part.__dict__.get(attr),)


def replica_ran_last(part: nn.Module, attr: str) -> bool:
    """Whether the last forward of ``part`` ran in ``DataParallel`` replicas (see
    :class:`ReplicaNote`), so its own record ``attr`` is not that forward's."""
    note = part.__dict__.get(REPLICA_NOTE)
    return isinstance(note, ReplicaNote) and note.seen is not None and note.seen[0] is part.__dict__.get(attr)


class LoopCore(nn.Module):
    """Base of the span and model loop parts: loop count, gates, adaptive exit, diagnostics.

    Subclasses call :meth:`iterate` from their forward with a step function.
    """

    loop_scope: str = ""

    def __init__(self, max_loops: int, gate_init_bias: float = 0.0, update: str = "gated",
                 damping: float = 0.5, use_gradient_checkpointing: bool = True) -> None:
        super().__init__()
        if update not in UPDATES:
            raise BackboneError(f"update must be one of {list(UPDATES)}, got {update!r}")
        self.max_loops = int(max_loops)
        self.current_loops = int(max_loops)
        self.exit_tol = 0.0
        self.update = update
        self.damping = float(damping)
        self.use_gradient_checkpointing = use_gradient_checkpointing
        self.schema_hash = ""
        if update == "gated":
            # one gate per iteration >= 1; iterations past the trained count reuse the last one
            self.loop_gate = nn.Parameter(
                torch.full((max(self.max_loops - 1, 1),), float(gate_init_bias)))
        self._counts: Optional[torch.Tensor] = None
        self._stats: Optional[Dict[str, Any]] = None
        setattr(self, REPLICA_NOTE, ReplicaNote())

    # --- configuration ---------------------------------------------------------------------------
    def set_loops(self, n: int, exit_tol: Optional[float] = None) -> None:
        """Iterations per forward (any ``n >= 1``, also beyond ``max_loops``: the last trained
        embedding and gate are reused) and the adaptive-exit tolerance (None keeps it)."""
        n = check_loops(n, f"{type(self).__name__}.set_loops")
        if exit_tol is not None:
            self.exit_tol = check_exit_tol(exit_tol, f"{type(self).__name__}.set_loops")
        self.current_loops = n

    def gate(self, t: int, dtype: torch.dtype) -> Any:
        """``a_t`` of iteration ``t >= 1``."""
        if self.update == "replace":
            return 1.0
        if self.update == "damped":
            return self.damping
        g = self.loop_gate
        return g[min(t - 1, g.numel() - 1)].to(dtype)

    def named_loop_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        own = [(n, p) for n, p in self.named_parameters() if not n.startswith(self._skip_prefixes())]
        return own + self._extra_loop_parameters()

    def _skip_prefixes(self) -> Tuple[str, ...]:
        return ("original.", "canvas_fn.")

    def _extra_loop_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        return []

    def loop_parameters(self) -> List[nn.Parameter]:
        return [p for _, p in self.named_loop_parameters()]

    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.loop_parameters() if p.requires_grad)

    # --- the iteration -----------------------------------------------------------------------------
    def iterate(self, x0: Tuple[torch.Tensor, ...],
                run: Callable[[int, Tuple[torch.Tensor, ...], Optional[torch.Tensor]], Tuple[torch.Tensor, ...]]
                ) -> Tuple[torch.Tensor, ...]:
        """Run ``current_loops`` iterations from ``x0`` (see the module docstring); ``run(t, h,
        rows)`` gets the state of the rows ``rows`` (None: the whole batch) and returns the
        step's output for them. Records :meth:`counts` and :meth:`stats`."""
        B = x0[0].shape[0]
        dev = x0[0].device
        n, tol = self.current_loops, self.exit_tol
        counts = torch.zeros(B, dtype=torch.long, device=dev)
        rel_hist: List[torch.Tensor] = []  # device tensors: no host sync per iteration at fixed depth
        norm_hist: List[torch.Tensor] = []
        act_hist: List[int] = []
        h = x0
        active: Optional[torch.Tensor] = None  # None: every row
        prev_sq: Any = None  # ||h|| of the rows computed next, as _exit_stats keeps it
        for t in range(n):
            if active is None:
                y = run(t, h, None)
                new = y if t == 0 else self._combine(t, h, y)
                prev, cur = h, new
            else:
                sub = tuple(s.index_select(0, active) for s in h)
                y = run(t, sub, active)
                new_sub = self._combine(t, sub, y)
                new = tuple(s.index_copy(0, active, ns.to(s.dtype)) for s, ns in zip(h, new_sub))
                prev, cur = sub, new_sub
            with torch.no_grad():
                rel, cur_sq, rms = _exit_stats(prev, cur, prev_sq)
                if any(c.dtype != s.dtype for c, s in zip(cur, new)):
                    cur_sq = None  # the state keeps other values than the ones measured
                if active is None:
                    counts += 1
                else:
                    counts.index_add_(0, active, torch.ones_like(active))
                rel_hist.append(_batch_mean(rel))
                norm_hist.append(_batch_mean(rms if rms is not None else _token_rms(cur)))
                act_hist.append(B if active is None else int(active.numel()))
            h, prev_sq = new, cur_sq
            if tol > 0 and t >= 1:  # the only host sync: which samples go on
                with torch.no_grad():
                    rows = torch.arange(B, device=dev) if active is None else active
                    go = (~(rel.to(dev) < tol)).nonzero().squeeze(1)
                    keep = rows[go]
                if keep.numel() == 0:
                    break
                if keep.numel() < rows.numel():
                    active = keep
                    prev_sq = _keep_rows(prev_sq, go)
        note_replica_record(self, "_stats")
        self._counts = counts
        self._stats = {"scope": self.loop_scope, "iterations": len(act_hist), "rel_change": rel_hist,
                       "state_norm": norm_hist, "active": act_hist, "core_rows": sum(act_hist),
                       "exit_tol": tol, "loops": n}
        return h

    def _combine(self, t: int, h: Tuple[torch.Tensor, ...], y: Tuple[torch.Tensor, ...]):
        if len(y) != len(h):
            raise BackboneError(
                f"{type(self).__name__}: the step returned {len(y)} streams, expected {len(h)}")
        if self.update == "replace":  # y itself: h + (y - h) is not y once rounded (in bfloat16
            # a state of 100 replaced by 0.3 gave 0.5) and overflows where y - h does
            return tuple(n_.to(torch.promote_types(s.dtype, n_.dtype)) for s, n_ in zip(h, y))
        a = self.gate(t, h[0].dtype)
        return tuple(gated_update(s, n_, a) for s, n_ in zip(h, y))

    def counts(self) -> torch.Tensor:
        refuse_replica_record(self, "_stats", "loop_counts")
        if self._counts is None:
            raise CanvasTypeError(
                f"{type(self).__name__}: no forward has run yet; call the model first, then "
                "loop_counts(model)")
        return self._counts.detach().cpu().clone()

    def stats(self) -> Dict[str, Any]:
        refuse_replica_record(self, "_stats", "loop_stats")
        if self._stats is None:
            raise CanvasTypeError(
                f"{type(self).__name__}: no forward has run yet; call the model first, then "
                "loop_stats(model)")
        out = dict(self._stats)
        for k in ("rel_change", "state_norm"):
            out[k] = [float(v) for v in out[k]]
        out["active"] = list(out["active"])
        return out

    def extra_repr(self) -> str:
        return (f"scope={self.loop_scope}, max_loops={self.max_loops}, current_loops={self.current_loops}, "
                f"update={self.update!r}, exit_tol={self.exit_tol}, trainable_params={self.trainable_params()}")


def refuse_replica_record(part: nn.Module, attr: str, where: str, owner: str = "") -> None:
    """``CanvasTypeError`` when the last forward of ``part`` ran in ``DataParallel`` replicas:
    ``where`` (``loop_counts`` / ``loop_stats``) would otherwise read an older forward's record."""
    if replica_ran_last(part, attr):
        raise CanvasTypeError(
            f"{where}: the last forward of {owner or type(part).__name__} ran in DataParallel replicas (one "
            f"copy per device), and their records went with them; {where} reads the record the "
            "model itself keeps, so it would report an older forward. Run the forward you want to "
            "inspect on the model itself (dp.module(...)) or DataParallel over one device, or train "
            "with DistributedDataParallel (each process's model keeps its own record)")


def gated_update(h: torch.Tensor, y: torch.Tensor, a: Any) -> torch.Tensor:
    """``h + a * (y - h)``. Where ``a`` (a tensor gate) is exactly 0 and ``y - h`` is not finite (an
    extra pass that overflowed), the difference counts as 0, so the result is ``h`` itself rather
    than ``h + 0 * inf = NaN``; everywhere else the formula's values and gradients are unchanged
    (the gate still learns from every finite difference), with no host sync."""
    d = y - h
    if isinstance(a, torch.Tensor):
        d = torch.where((a != 0) | torch.isfinite(d), d, 0.0)
    return h + a * d


def _rel_change(prev: Tuple[torch.Tensor, ...], cur: Tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Per sample ``||cur - prev|| / ||prev||`` over every stream, ``(B,)``: :func:`_exit_stats`
    without what the next iteration reuses (nor ``||cur||``: an infinite ``cur`` reads as inf,
    not NaN; not converged either way)."""
    return _exit_stats(prev, cur, None, with_cur=False)[0]


class _Kept(NamedTuple):
    """What the next iteration reuses of a float64 state (or a float32 one on mps), per sample:
    ``norm`` its norm times ``2**-exp``, ``exp`` that power of two (0 for ordinary magnitudes)
    and ``peak`` its largest magnitude; all ``(B,)`` in the state's dtype."""
    norm: torch.Tensor
    exp: torch.Tensor
    peak: torch.Tensor


def _keep_rows(kept: Any, go: torch.Tensor) -> Any:
    """``kept`` (what :func:`_exit_stats` returned for the next iteration) for the rows ``go``."""
    if kept is None:
        return None
    return _Kept(*(x[go] for x in kept)) if isinstance(kept, _Kept) else kept[go]


def _exit_stats(prev: Tuple[torch.Tensor, ...], cur: Tuple[torch.Tensor, ...],
                prev_sq: Any = None, with_cur: bool = True
                ) -> Tuple[torch.Tensor, Any, Optional[torch.Tensor]]:
    """``(rel, kept, rms)`` of one iteration, with no host sync.

    ``rel``: per sample ``||cur - prev|| / ||prev||`` over every stream, ``(B,)``, float32 (float64
    for float64 states); 0 when both are 0; ``inf`` when only ``prev`` is 0, and when the change
    overflowed in an element although both states are finite (a float32 state at the edge of
    its range: not converged); NaN when a state is not finite (never "converged").
    ``kept``: what the next iteration, whose ``prev`` holds the same values, passes back as
    ``prev_sq``, so each state's norm is computed once: ``||cur||^2`` per sample (float64), or a
    :class:`_Kept` for float64 states (and mps). ``rms``: the RMS of ``cur[0]`` per sample.

    Norms of float32 / bfloat16 / float16 states are accumulated in float64, so their squares
    neither overflow nor underflow. Float64 states (and devices without float64: mps) keep their
    dtype (converted to float32 they lost their range and every change below 6e-8) and are
    multiplied by a power of two per sample where their magnitude is extreme
    (:func:`_scaled_stats`). ``with_cur=False``: no ``kept`` / ``rms``.
    """
    pairs = []
    for p, c in zip(prev, cur):
        if p.shape != c.shape:  # a model-scope step map whose output is not its input's shape
            return torch.full((p.shape[0],), float("nan"), device=p.device), None, None
        pairs.append((p.detach().flatten(1), c.detach().flatten(1)))
    wide = any(t.dtype == torch.float64 for pair in pairs for t in pair)
    if wide or pairs[0][0].device.type == "mps":
        work = torch.float64 if wide else torch.float32
        pairs = [(p.to(work), c.to(work)) for p, c in pairs]
        return _scaled_stats(pairs, prev_sq if isinstance(prev_sq, _Kept) else None, with_cur)
    if isinstance(prev_sq, _Kept):  # the last state was float64: its record does not apply
        prev_sq = None
    num = den = cur_sq = rms = None
    for k, (p, c) in enumerate(pairs):
        p32, c32 = p.float(), c.float()
        d = _norm64(c32 - p32).square()
        num = d if num is None else num + d
        if prev_sq is None:
            q = _norm64(p32).square()
            den = q if den is None else den + q
        if with_cur:
            cq = _norm64(c32).square()
            cur_sq = cq if cur_sq is None else cur_sq + cq
            if k == 0:
                rms = (cq / c32.shape[1]).sqrt().float()
    rel = _ratio(num, den if prev_sq is None else prev_sq, cur_sq).float()
    return rel, cur_sq, rms


def _batch_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of a per-sample statistic, in float64 where there is float64: in float32 the sum
    of a batch of finite norms near float32's max overflowed to inf."""
    return x.mean() if x.device.type == "mps" else x.mean(dtype=torch.float64)


def _norm64(x: torch.Tensor) -> torch.Tensor:
    """``(B,)`` float64: each row's 2-norm, accumulated in float64 (torch converts ``x`` to float64
    for it: the main cost of the statistics, hence each state's norm computed once)."""
    return torch.linalg.vector_norm(x, dim=1, dtype=torch.float64)


def _ratio(num: torch.Tensor, den: torch.Tensor, cur_sq: Optional[torch.Tensor] = None,
           squared: bool = True) -> torch.Tensor:
    """``sqrt(num / den)`` (``num / den`` when not ``squared``) with the rules of
    :func:`_exit_stats` for 0 and non-finite values (``num``, ``den``: squared norms of the change
    and of ``prev``; ``cur_sq``: of ``cur``, when known, to tell a state that is not finite from
    a change that overflowed)."""
    zero = torch.where(num == 0, 0.0, float("inf"))
    rel = torch.where(den == 0, zero, num.sqrt() / den.sqrt() if squared else num / den)
    ok = torch.isfinite(den) & ~torch.isnan(num)
    if cur_sq is not None:
        ok = ok & torch.isfinite(cur_sq)
    return torch.where(ok, rel, float("nan"))


def _scaled_stats(pairs: List[Tuple[torch.Tensor, torch.Tensor]], kept: Optional[_Kept],
                  with_cur: bool) -> Tuple[torch.Tensor, Optional[_Kept], Optional[torch.Tensor]]:
    """:func:`_exit_stats` in the pairs' own dtype (float64; float32 on mps).

    Each sample is multiplied by ``2**-e`` before its squares are summed, ``2**e`` near its
    largest magnitude, or ``e = 0`` where that lies within ``2**+-204`` (``2**+-25`` in float32:
    there the squares can neither overflow nor lose anything that counts): ordinary states are
    not scaled at all, and the product is exact either way. The state's norm uses its own ``e``,
    the change ``e`` of the larger of both states; one state-size buffer holds ``cur`` scaled
    and then the change. ``kept`` (the last call's, for these rows) replaces ``||prev||``."""
    peak_c = _peak([c for _, c in pairs])
    peak_p = _peak([p for p, _ in pairs]) if kept is None else kept.peak
    e_c, e_d = _scale_exp(peak_c), _scale_exp(torch.maximum(peak_p, peak_c))
    s_c, s_d = torch.exp2(-e_c).unsqueeze(1), torch.exp2(-e_d).unsqueeze(1)
    r = torch.exp2(e_c - e_d).unsqueeze(1)  # s_d / s_c, at most 1
    e_p = _scale_exp(peak_p) if kept is None else kept.exp
    n_p = n_c = n_d = rms = None
    for k, (p, c) in enumerate(pairs):
        buf = None
        if kept is None:
            buf = p * torch.exp2(-e_p).unsqueeze(1)
            n_p = _hypot(n_p, torch.linalg.vector_norm(buf, dim=1))
        buf = c * s_c if buf is None else torch.mul(c, s_c, out=buf)
        if with_cur:
            n = torch.linalg.vector_norm(buf, dim=1)
            n_c = _hypot(n_c, n)
            if k == 0:
                rms = n / c.shape[1] ** 0.5 * torch.exp2(e_c)
        buf.mul_(r).addcmul_(p, s_d, value=-1)  # (cur - prev) * s_d
        n_d = _hypot(n_d, torch.linalg.vector_norm(buf, dim=1))
    if kept is not None:
        n_p = kept.norm
    # ||d|| / ||p|| = (n_d / n_p) * 2**(e_d - e_p); exp2(0) = 1 for ordinary states. Divided
    # first: n_d * 2**(e_d - e_p) alone overflowed where the ratio is finite (0, inf, NaN kept)
    ratio = _ratio(n_d, n_p, n_c, squared=False)
    scaled = ratio * torch.exp2((e_d - e_p).clamp(min=-1100, max=1100))
    rel = torch.where(torch.isfinite(ratio) & (ratio != 0), scaled, ratio)
    return rel, (_Kept(n_c, e_c, peak_c) if with_cur else None), rms


def _hypot(a: Optional[torch.Tensor], b: torch.Tensor) -> torch.Tensor:
    """The norm over two streams from theirs (scaled norms: the squares stay in range)."""
    return b if a is None else (a.square() + b.square()).sqrt()


def _peak(states: List[torch.Tensor]) -> torch.Tensor:
    """``(B,)``: each sample's largest magnitude over ``states`` (each ``(B, n)``; two reductions
    per state, no temporary); NaN where a value is NaN."""
    m = None
    for t in states:
        if t.shape[1]:
            a = torch.maximum(t.amax(1), -t.amin(1))
            m = a if m is None else torch.maximum(m, a)
    return torch.zeros(states[0].shape[0], dtype=states[0].dtype, device=states[0].device) if m is None else m


def _scale_exp(peak: torch.Tensor) -> torch.Tensor:
    """The exponent ``e`` of :func:`_scaled_stats` for samples of largest magnitude ``peak``: 0
    within ``2**+-(top // 5)``, else ``floor(log2(peak))`` limited so that ``2**-e`` is a finite
    normal number (NaN stays NaN)."""
    fin = torch.finfo(peak.dtype)
    top, tiny = math.frexp(fin.max)[1], math.frexp(fin.tiny)[1] - 1  # 1024, -1022 in float64
    e = torch.log2(peak).floor().clamp(min=1 - top, max=-tiny)
    return torch.where(e.abs() <= top // 5, 0.0, e)


def _rel_change_scaled(pairs: List[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """:func:`_scaled_stats`'s ``rel`` alone (float64 states; float32 on a device without
    float64)."""
    return _scaled_stats(pairs, None, False)[0]


def _token_rms(cur: Tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Per sample RMS of the first stream's values (the hidden-state norm per feature), float32,
    accumulated in float64 (see :func:`_exit_stats`) so it neither overflows nor underflows;
    float64 states (and mps) in their own dtype, scaled as in :func:`_scaled_stats`."""
    c = cur[0].detach()
    if c.dtype != torch.float64:
        c = c.float()
    c = c.flatten(1)
    if c.dtype == torch.float64 or c.device.type == "mps":
        e = _scale_exp(_peak([c]))
        n = torch.linalg.vector_norm(c * torch.exp2(-e).unsqueeze(1), dim=1)
        return n / c.shape[1] ** 0.5 * torch.exp2(e)
    return (_norm64(c).square() / c.shape[1]).sqrt().float()
