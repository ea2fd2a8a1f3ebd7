"""Adaptive exit at the extremes of the state's scale, and with non-finite states: the relative
change is scale-free (tiny states did not underflow to "converged", huge ones did not overflow to
NaN), and a sample whose state is NaN / inf never counts as converged: it runs every iteration,
its output keeps the NaN, and the other samples stop as usual."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import canvas_core as cc

torch.set_num_threads(1)


class _Half(nn.Module):
    """``x -> x / 2``: every iteration changes the state by half of itself, at any scale."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_dim = 4
        self.blocks = nn.ModuleList([_Half()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x


def _grafted(scope: str = "stack") -> nn.Module:
    m = _Net()
    kw = {"update": "replace"} if scope != "block" else {}
    cc.graft_looped_blocks(m, max_loops=2, scope=scope, latent_channels=4, **kw)
    return m


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1.0, 1e20, 1e30])
@pytest.mark.parametrize("scope", ["stack", "model"])
def test_relative_change_is_scale_free(scope, scale):
    m = _grafted(scope)
    cc.set_loops(m, 5, exit_tol=0.1)  # a change of 0.5 per iteration never converges
    with torch.no_grad():
        out = m(torch.full((2, 3, 4), scale))
    assert cc.loop_counts(m).tolist() == [5, 5]
    stats = cc.loop_stats(m)
    assert stats["rel_change"] == pytest.approx([0.5] * 5, rel=1e-5)
    assert stats["state_norm"][0] == pytest.approx(scale / 2, rel=1e-5)
    assert torch.allclose(out, torch.full_like(out, scale / 32), rtol=1e-5, atol=0)


def test_block_scope_stats_are_scale_free():
    m = _grafted("block")
    with torch.no_grad():
        m(torch.full((2, 3, 4), 1e25))
    stats = cc.loop_stats(m)
    assert all(math.isfinite(v) for v in stats["rel_change"] + stats["state_norm"])
    assert stats["state_norm"][0] == pytest.approx(0.5e25, rel=1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("scope", ["stack", "model"])
def test_non_finite_sample_runs_every_iteration_and_others_still_exit(scope, bad):
    m = _grafted(scope)
    x = torch.ones(3, 3, 4)
    x[1, 0, 0] = bad
    cc.set_loops(m, 6, exit_tol=0.6)  # 0.5 < 0.6: finite samples stop after iteration 1
    with torch.no_grad():
        out = m(x)
    assert cc.loop_counts(m).tolist() == [2, 6, 2]
    assert not torch.isfinite(out[1]).all()
    assert torch.equal(out[0], torch.full_like(out[0], 0.25)) and torch.equal(out[2], out[0])


def test_zero_state_converges_and_zero_to_nonzero_does_not():
    from canvas_core.looping.loop_engine import _rel_change

    z = torch.zeros(2, 3, 4)
    one = torch.ones(2, 3, 4) * 1e-30
    assert _rel_change((z,), (z,)).tolist() == [0.0, 0.0]
    assert _rel_change((z,), (one,)).tolist() == [math.inf, math.inf]
