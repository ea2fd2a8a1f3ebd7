"""The per-iteration statistics of a loop part (:mod:`canvas_core.looping.loop_engine`), computed
on the device with no host sync: each sample's relative change ``||h_t - h_{t-1}|| / ||h_{t-1}||``
over all its streams, which adaptive exit compares with ``exit_tol``, what the next iteration
reuses of it (each state's norm is computed once), and the per-sample RMS of the state that
``loop_stats`` reports.  Norms are summed in float64, or, for float64 states (and on mps), in the
state's own dtype with each sample scaled by a power of two, so that no square overflows or
underflows; a state that is not finite reads as NaN, never as converged."""

from __future__ import annotations

import math
from typing import Any, List, NamedTuple, Optional, Tuple

import torch


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
