"""Hostile inputs of the loop scopes found in the audit: a runaway loop count, a non-finite gate
bias, and a checkpoint of other span options; each refused with a CanvasError, model unchanged."""

from __future__ import annotations

import math

import pytest
import torch

import canvas_core
from canvas_core.errors import CanvasError
from canvas_core.looping import graft_looped_blocks, load_loop_checkpoint, save_loop_checkpoint
from canvas_core.looping.scopes import loop_parts_of

from tests.looping._scope_setup import make_net


@pytest.mark.parametrize("scope", ["block", "stack", (1, 3), "model"])
def test_set_loops_refuses_a_count_over_the_loop_limit(scope, monkeypatch):
    m = make_net()
    graft_looped_blocks(m, scope=scope, max_loops=3)
    before = [p.current_loops for p in loop_parts_of(m)]
    with pytest.raises(CanvasError, match=r"set_loops n = 1,000,000,000 exceeds the limit .*CANVAS_MAX_LOOPS"):
        canvas_core.set_loops(m, 10**9)
    assert [p.current_loops for p in loop_parts_of(m)] == before
    monkeypatch.setenv("CANVAS_MAX_LOOPS", "4000")
    assert canvas_core.set_loops(m, 2000) == 2000  # the limit is settable


@pytest.mark.parametrize("bias", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("scope", ["block", "stack"])
def test_graft_refuses_a_non_finite_gate_bias(bias, scope):
    m = make_net()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(CanvasError, match="gate_init_bias must be a number, finite"):
        graft_looped_blocks(m, scope=scope, gate_init_bias=bias)
    assert m.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())


@pytest.mark.parametrize("saved, other", [
    (dict(), dict(iter_norm="rms")),
    (dict(iter_norm="rms"), dict()),
    (dict(update="damped", damping=0.5), dict(update="damped", damping=0.25)),
    (dict(update="damped"), dict(update="replace")),
])
def test_loop_checkpoint_refuses_other_span_options(tmp_path, saved, other):
    """Options that change the loop's function without changing a parameter shape are recorded."""
    m1 = make_net()
    b1, h1 = graft_looped_blocks(m1, scope="stack", **saved)
    path = str(tmp_path / "loops.safetensors")
    save_loop_checkpoint(b1, h1, path)
    m2 = make_net(seed=1)
    b2, h2 = graft_looped_blocks(m2, scope="stack", **other)
    state = {k: v.clone() for k, v in m2.state_dict().items()}
    with pytest.raises(CanvasError, match="grafted with .* and this model is grafted with"):
        load_loop_checkpoint(b2, h2, path)
    assert all(torch.equal(v, state[k]) for k, v in m2.state_dict().items())
    m3 = make_net(seed=1)
    b3, h3 = graft_looped_blocks(m3, scope="stack", **saved)
    load_loop_checkpoint(b3, h3, path)  # the same options load


def _knuth_reference(seed, step, mean, sigma, lo, hi):
    from canvas_core.looping.schedules import step_random

    rng = step_random(seed, step)
    lam = math.exp(rng.gauss(math.log(mean) - sigma ** 2 / 2, sigma))
    k, p = 0, 1.0
    while True:
        p *= rng.random()
        if p <= math.exp(-lam):
            return min(hi, max(lo, 1 + k))
        k += 1


def test_lognormal_poisson_depth_keeps_its_mean_past_the_underflow_of_exp():
    from canvas_core.looping.schedules import RandomDepthScheduler

    big = RandomDepthScheduler(max_loops=1024, distribution="lognormal_poisson", mean=800, sigma=0.01, seed=0)
    draws = [big.get_loops(s) for s in range(300)]
    assert 790 < sum(draws) / len(draws) < 812  # Poisson(~800) + 1; Knuth alone stops near 745
    small = RandomDepthScheduler(max_loops=64, distribution="lognormal_poisson", mean=3, seed=7)
    assert [small.get_loops(s) for s in range(200)] == [_knuth_reference(7, s, 3, 0.5, 1, 64) for s in range(200)]


@pytest.mark.parametrize("saved, other, holder", [
    (dict(inject="add"), dict(inject="concat"), "the checkpoint holds loop parameter 'inject_gate'"),
    (dict(), dict(iter_embed=False), "the checkpoint holds loop parameter 'loop_emb'"),
    (dict(), dict(inject="add"), "the model has loop parameter 'inject_gate'"),
])
def test_a_missing_loop_parameter_is_named_as_such(tmp_path, saved, other, holder):
    b1, h1 = graft_looped_blocks(make_net(), scope="stack", **saved)
    path = str(tmp_path / "loops.safetensors")
    save_loop_checkpoint(b1, h1, path)
    b2, h2 = graft_looped_blocks(make_net(), scope="stack", **other)
    with pytest.raises(CanvasError, match=holder + r" and the (model|checkpoint) does not"):
        load_loop_checkpoint(b2, h2, path)


@pytest.mark.parametrize("damping", [0.25, 1, __import__("numpy").float32(0.25), __import__("fractions").Fraction(1, 4)])
def test_damping_takes_any_real_number_in_range(damping):
    m = make_net()
    graft_looped_blocks(m, scope="stack", update="damped", damping=damping)
    assert all(float(p.damping) == float(damping) for p in loop_parts_of(m))
