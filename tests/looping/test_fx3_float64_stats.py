"""Adaptive-exit statistics of float64 states: their norms in float64 directly, each computed once
(two per stream and iteration, as for the other dtypes), a power-of-two scaling only where a
sample's magnitude is extreme, one state-size temporary per stream, no host sync; values as
recomputed from scratch, and right for samples at 1e-250 / 1e250 next to ordinary ones."""

from __future__ import annotations

import math
from typing import Any, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from canvas_core.looping.loop_engine import LoopCore, _exit_stats, _rel_change, _token_rms

torch.set_num_threads(1)


class _Recorder(LoopCore):
    loop_scope = "test"


class _Ops(TorchDispatchMode):
    """Counts vector norms, ops touching a tensor of ``numel`` elements, the new tensors of that
    size they return, and host syncs."""

    def __init__(self, numel: int = -1) -> None:
        super().__init__()
        self.numel, self.norms, self.big, self.new_big, self.syncs = numel, 0, [], [], []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.__name__
        if "vector_norm" in name:
            self.norms += 1
        if "local_scalar" in name or "nonzero" in name:
            self.syncs.append(name)
        out = func(*args, **(kwargs or {}))
        if name.split(".")[0] not in ("view", "_unsafe_view", "detach", "alias", "_to_copy", "clone") and any(
                isinstance(a, torch.Tensor) and a.numel() == self.numel for a in args):
            self.big.append(name)
            inputs = {a.data_ptr() for a in args if isinstance(a, torch.Tensor)}
            inputs |= {v.data_ptr() for v in (kwargs or {}).values() if isinstance(v, torch.Tensor)}
            if isinstance(out, torch.Tensor) and out.numel() == self.numel and out.data_ptr() not in inputs:
                self.new_big.append(name)
        return out


def _states(B: int = 4, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(B, 6, 8, generator=g, dtype=torch.float64)
    return p, p * 0.9 + 0.01 * torch.randn(B, 6, 8, generator=g, dtype=torch.float64)


def test_float64_iteration_computes_two_norms_per_stream():
    x0 = (torch.randn(3, 4, 8, dtype=torch.float64), torch.randn(3, 2, 8, dtype=torch.float64))
    for tol in (0.0, 1e-12):
        core = _Recorder(max_loops=2, update="damped")
        core.set_loops(6, exit_tol=tol)
        with torch.no_grad(), _Ops() as mode:
            core.iterate(x0, lambda t, h, rows: tuple(0.9 * s + 0.01 for s in h))
        assert core._stats["iterations"] == 6
        # ||h_t - h_{t-1}|| and ||h_t|| per stream (||h_{t-1}|| reused), plus ||x0||, no sync at all
        assert mode.norms == 6 * 2 * 2 + 2
        assert tol or not mode.syncs  # at fixed depth no host sync at all


def test_float64_statistics_make_one_state_size_temporary_and_no_sync():
    p, c = _states()
    kept = _exit_stats((p,), (p,), None)[1]
    with _Ops(p.numel()) as mode:
        _exit_stats((p,), (c,), kept)
    assert not mode.syncs, mode.syncs
    assert len(mode.new_big) <= 1, mode.new_big  # the buffer for cur scaled, then the change
    assert len(mode.big) <= 7, mode.big  # amax, amin, mul, norm, mul_, addcmul_, norm


def test_ordinary_float64_states_are_not_scaled_and_reuse_gives_the_same_bits():
    p, c = _states()
    rel, kept, rms = _exit_stats((p,), (c,), None)
    f = lambda x: torch.linalg.vector_norm(x.flatten(1), dim=1)  # noqa: E731
    assert rel.dtype == rms.dtype == torch.float64
    assert torch.equal(rel, f(c - p) / f(p))  # float64 directly: no conversion, no division
    assert torch.equal(rms, f(c) / math.sqrt(48))
    nxt = c * 0.5 + 0.2
    again = _exit_stats((c,), (nxt,), kept)[0]
    assert torch.equal(again, _rel_change((c,), (nxt,)))


def test_extreme_samples_next_to_ordinary_ones():
    p, c = _states(B=6, seed=1)
    scales = torch.tensor([1e-300, 1e-250, 1e-20, 1.0, 1e250, 1e300], dtype=torch.float64).view(-1, 1, 1)
    want = torch.linalg.vector_norm((c - p).flatten(1), dim=1) / torch.linalg.vector_norm(p.flatten(1), dim=1)
    rms_want = c.flatten(1).pow(2).mean(1).sqrt()
    rel, kept, rms = _exit_stats((p * scales,), (c * scales,), None)
    assert torch.allclose(rel, want, rtol=1e-14, atol=0), rel
    assert torch.allclose(rms / scales.flatten(), rms_want, rtol=1e-14, atol=0)
    assert torch.allclose(_token_rms((c * scales,)) / scales.flatten(), rms_want, rtol=1e-14, atol=0)
    # a state that collapses from 1 to 1e-250 in one iteration: its own norm is kept exactly
    tiny = c * 1e-250
    r1, k1, _ = _exit_stats((c,), (tiny,), None)
    assert torch.allclose(r1, torch.ones_like(r1), rtol=1e-12)
    r2 = _exit_stats((tiny,), (tiny * 0.5,), k1)[0]
    assert torch.allclose(r2, torch.full_like(r2, 0.5), rtol=1e-14, atol=0)
    assert torch.equal(r2, _rel_change((tiny,), (tiny * 0.5,)))


def test_float64_rules_for_zero_and_non_finite_states():
    p = torch.ones(4, 5, dtype=torch.float64)
    c = p.clone()
    p[0], c[0] = 0.0, 0.0  # both 0: no change
    p[1] = 0.0  # only prev 0: inf
    c[2, 1] = math.nan  # not finite: NaN
    c[3, 0] = math.inf
    rel = _exit_stats((p,), (c,), None)[0]
    assert rel[0].item() == 0.0 and rel[1].item() == math.inf
    assert math.isnan(rel[2].item()) and math.isnan(rel[3].item())
    big = torch.full((1, 5), 1.5e308, dtype=torch.float64)  # finite, the change is not
    assert _rel_change((big,), (-big,)).item() == 2.0


def _run(x0: Tuple[torch.Tensor, ...], tol: float) -> Tuple[List[Tuple[Any, Any]], dict]:
    core = _Recorder(max_loops=3, update="damped", damping=0.7)
    core.set_loops(10, exit_tol=tol)
    B = x0[0].shape[0]
    rate = torch.linspace(0.05, 0.95, B, dtype=torch.float64)
    seen = []

    def run(t: int, h: Tuple[torch.Tensor, ...], rows: Optional[torch.Tensor]):
        r = (rate if rows is None else rate[rows]).view(-1, 1, 1)
        y = tuple(r * s + 1e-3 * s.abs().amax() for s in h)
        seen.append((h, y if t == 0 else core._combine(t, h, y)))
        return y

    with torch.no_grad():
        core.iterate(x0, run)
    return seen, core._stats


def test_reuse_follows_the_rows_that_go_on():
    scales = torch.tensor([1e-250, 1.0, 1e200, 3.0, 1e-30], dtype=torch.float64).view(-1, 1, 1)
    g = torch.Generator().manual_seed(5)
    x0 = tuple(torch.randn(5, 3, 4 + k, generator=g, dtype=torch.float64) * scales for k in range(2))
    seen, stats = _run(x0, 0.05)
    assert min(stats["active"]) < 5
    for t, (h, cur) in enumerate(seen):
        assert stats["rel_change"][t].item() == _rel_change(h, cur).mean(dtype=torch.float64).item()


def test_a_finite_ratio_between_states_of_far_apart_scales_is_not_inf():
    # prev ~1e10, cur ~1e308: ||cur - prev|| / ||prev|| ~ 1e298 is finite; multiplying the change's
    # scaled norm by 2**(e_d - e_p) before dividing overflowed to inf
    from canvas_core.looping.loop_engine import _exit_stats

    g = torch.Generator().manual_seed(0)
    prev = (torch.randn(2, 64, generator=g, dtype=torch.float64) * 1e10,)
    cur = (torch.randn(2, 64, generator=g, dtype=torch.float64) * 1e307,)
    rel = _exit_stats(prev, cur, None)[0]
    num = torch.linalg.vector_norm((cur[0] - prev[0]) / 1e307, dim=1)  # each norm at its own scale
    want = num / torch.linalg.vector_norm(prev[0] / 1e10, dim=1) * 1e297
    assert torch.isfinite(rel).all()
    torch.testing.assert_close(rel, want, rtol=1e-12, atol=0)
