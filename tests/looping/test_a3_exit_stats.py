"""Adaptive-exit statistics: each state's norm is computed once (the next iteration reuses it) with
the very same values as recomputing it; float64 states keep their range and precision; a change
that overflows float32 between finite states reads as inf (not converged), not NaN; batch means
do not overflow; ``update="replace"`` returns the core's output itself."""

from __future__ import annotations

import math
from typing import Any, List, Optional, Tuple

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import canvas_core as cc
from canvas_core.looping.loop_engine import LoopCore, _rel_change

torch.set_num_threads(1)


# --- the formulas before the reuse, written out: the reference the reused norms must equal -------
def _norm64(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, dim=1, dtype=torch.float64)


def _reference(prev: Tuple[torch.Tensor, ...], cur: Tuple[torch.Tensor, ...]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per sample rel change and RMS, each norm recomputed from the states."""
    num = den = None
    for p, c in zip(prev, cur):
        p32, c32 = p.detach().float().flatten(1), c.detach().float().flatten(1)
        d, q = _norm64(c32 - p32).square(), _norm64(p32).square()
        num = d if num is None else num + d
        den = q if den is None else den + q
    zero = torch.where(num == 0, 0.0, float("inf"))
    rel = torch.where(den == 0, zero, num.sqrt() / den.sqrt())
    rel = torch.where(torch.isfinite(num) & torch.isfinite(den), rel, float("nan")).float()
    c = cur[0].detach().float().flatten(1)
    return rel, (_norm64(c).square() / c.shape[1]).sqrt().float()


class _Recorder(LoopCore):
    loop_scope = "test"


def _run(core: LoopCore, x0: Tuple[torch.Tensor, ...], seed: int) -> List[Tuple[Any, Any, Optional[torch.Tensor]]]:
    """``core.iterate`` with a random contracting step; returns each iteration's ``(prev, cur,
    rows)`` as the engine computed them (``cur`` recomputed from the same formula)."""
    g = torch.Generator().manual_seed(seed)
    W = [torch.randn(s.shape[-1], s.shape[-1], generator=g).to(s.dtype) * 0.3 for s in x0]
    B = x0[0].shape[0]
    rate = torch.linspace(0.05, 0.95, B)  # samples converge at different speeds
    seen = []

    def run(t: int, h: Tuple[torch.Tensor, ...], rows: Optional[torch.Tensor]):
        r = (rate if rows is None else rate[rows]).view(-1, 1, 1)
        y = tuple((r * s + 1 + 0.01 * torch.tanh(s @ w)).to(s.dtype) for s, w in zip(h, W))
        cur = y if t == 0 else core._combine(t, h, y)
        seen.append((h, cur, rows))
        return y

    with torch.no_grad():
        core.iterate(x0, run)
    return seen


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("streams", [1, 2])
@pytest.mark.parametrize("tol", [0.0, 0.02])
def test_reused_norms_give_the_same_bits_as_recomputing_them(dtype, streams, tol):
    g = torch.Generator().manual_seed(3)
    x0 = tuple(torch.randn(5, 7, 6 + k, generator=g).mul(10.0 ** (2 * k)).to(dtype) for k in range(streams))
    core = _Recorder(max_loops=3, update="damped", damping=0.7)
    core.set_loops(12, exit_tol=tol)
    seen = _run(core, x0, seed=4)
    stats = core._stats
    assert len(seen) == stats["iterations"] >= 3
    if tol:
        assert min(stats["active"]) < 5  # rows dropped out, so the reuse followed them
    for t, (h, cur, _) in enumerate(seen):
        rel, rms = _reference(h, cur)
        assert stats["rel_change"][t].item() == rel.double().mean().item()
        assert stats["state_norm"][t].item() == rms.double().mean().item()
    # and chained by hand: the returned squared norms passed back give identical bits
    from canvas_core.looping.loop_engine import _exit_stats

    prev_sq = None
    for h, cur, _ in seen[:1]:
        for _ in range(3):
            nxt = tuple(torch.tanh(c.float()).to(c.dtype) for c in cur)
            rel, prev_sq2, rms = _exit_stats(cur, nxt, prev_sq)
            assert torch.equal(rel, _reference(cur, nxt)[0]) and torch.equal(rms, _reference(cur, nxt)[1])
            cur, prev_sq = nxt, prev_sq2


class _Norms(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.norms = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if "vector_norm" in func.__name__:
            self.norms += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("tol", [0.0, 1e-9])
def test_each_iteration_computes_two_norms_per_stream_not_three(tol):
    x0 = (torch.randn(3, 4, 8), torch.randn(3, 2, 8))
    core = _Recorder(max_loops=2, update="damped")
    core.set_loops(6, exit_tol=tol)
    step = lambda t, h, rows: tuple(0.9 * s + 0.01 for s in h)  # noqa: E731
    with torch.no_grad(), _Norms() as mode:
        core.iterate(x0, step)
    assert core._stats["iterations"] == 6
    # per stream ||h_t - h_{t-1}|| and ||h_t|| (||h_{t-1}|| is the last one, reused), plus ||x0||
    assert mode.norms == 6 * 2 * 2 + 2


class _Scale(nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.k * x


class _Net(nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.embed_dim = 4
        self.blocks = nn.ModuleList([_Scale(k)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x


def _grafted(k: float, **kw: Any) -> nn.Module:
    m = _Net(k)
    cc.graft_looped_blocks(m, max_loops=2, scope="stack", **kw)
    return m


@pytest.mark.parametrize("scale", [1e-200, 1e-30, 1.0, 1e30, 1e200])
def test_float64_states_keep_their_range(scale):
    m = _grafted(0.5, update="replace").to(torch.float64)
    cc.set_loops(m, 5, exit_tol=0.1)  # a change of 0.5 per iteration never converges
    with torch.no_grad():
        out = m(torch.full((2, 3, 4), scale, dtype=torch.float64))
    assert cc.loop_counts(m).tolist() == [5, 5]
    stats = cc.loop_stats(m)
    assert stats["rel_change"] == pytest.approx([0.5] * 5, rel=1e-12)
    assert stats["state_norm"][0] == pytest.approx(scale / 2, rel=1e-12)
    assert torch.equal(out, torch.full_like(out, scale / 32))


def test_float64_change_below_float32_precision_is_not_converged():
    m = _grafted(1.0 + 1e-9, update="replace").to(torch.float64)
    cc.set_loops(m, 4, exit_tol=1e-12)  # each iteration changes the state by 1e-9 > 1e-12
    with torch.no_grad():
        m(torch.ones(2, 3, 4, dtype=torch.float64))
    assert cc.loop_counts(m).tolist() == [4, 4]
    assert cc.loop_stats(m)["rel_change"][1] == pytest.approx(1e-9, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_change_past_float32_max_between_finite_states_is_inf_not_nan(dtype):
    m = _grafted(-1.0, update="replace").to(dtype)  # +-2e38: finite, their difference is not
    cc.set_loops(m, 4, exit_tol=1e-3)
    x = torch.full((2, 3, 4), 2e38).to(dtype)
    with torch.no_grad():
        out = m(x)
    assert torch.equal(out, x)  # (-1)^4 x: replace is the core's output, no h + (y - h) overflow
    assert cc.loop_counts(m).tolist() == [4, 4]
    stats = cc.loop_stats(m)
    assert stats["rel_change"][1:] == [math.inf] * 3
    assert stats["state_norm"] == pytest.approx([float(x[0, 0, 0])] * 4, rel=1e-6)  # batch mean: no overflow
    blocks = _Net(-1.0)
    cc.graft_looped_blocks(blocks, max_loops=2)  # block scope: its own record, same statistics
    with torch.no_grad():
        blocks(torch.full((2, 3, 4), 2e38))
    assert cc.loop_stats(blocks)["state_norm"] == pytest.approx([2e38, 2e38], rel=1e-6)
    nan = torch.full((2, 12), 2e38)
    nan[1, 0] = math.nan
    rel = _rel_change((nan,), (-nan,))
    assert rel[0].item() == math.inf and math.isnan(rel[1].item())  # a NaN state stays NaN


def test_replace_update_is_the_core_output_itself():
    core = _Recorder(max_loops=2, update="replace")
    h = (torch.full((1, 2, 4), 100.0, dtype=torch.bfloat16),)
    y = (torch.full((1, 2, 4), 0.3, dtype=torch.bfloat16),)
    assert torch.equal(core._combine(1, h, y)[0], y[0])  # h + (y - h) gave 0.5 in bfloat16
    assert core._combine(1, h, (y[0].float(),))[0].dtype == torch.float32  # dtype as the formula's
