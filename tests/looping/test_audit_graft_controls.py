"""Graft-time refusals and the model-level controls (audit of the loop probes): a model on the meta
device, argument types, ``inner_dim`` against the generic model's own width, ``wrapper_class=``
wrappers seen by freeze / ``set_loops`` / the schedulers / a second graft, and the schedulers'
rule for span and model scopes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import canvas_core
from canvas_core.errors import BackboneError, CanvasError
from canvas_core.looping import CurriculumScheduler, RandomDepthScheduler, graft_looped_blocks, loop_parts_of, scope_of

from tests.looping._scope_setup import Net, make_net


def _untouched(m, state):
    return list(m.state_dict()) == list(state) and all(torch.equal(v, state[k]) for k, v in m.state_dict().items())


@pytest.mark.parametrize("scope", ["block", "stack", "model"])
def test_a_model_on_the_meta_device_is_refused_with_the_fix(scope):
    with torch.device("meta"):
        m = Net()
    keys = list(m.state_dict())
    with pytest.raises(BackboneError, match=r"meta device.*to_empty"):
        graft_looped_blocks(m, max_loops=3, scope=scope, latent_channels=3)
    assert list(m.state_dict()) == keys and "forward" not in m.__dict__
    assert not canvas_core.looping.looped_blocks_of(m)


@pytest.mark.parametrize("value", ["yes", None, 1, np.bool_(True)])
@pytest.mark.parametrize("scope", ["block", "stack"])
def test_use_gradient_checkpointing_must_be_a_bool(value, scope):
    m = make_net()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(BackboneError, match="use_gradient_checkpointing must be True or False"):
        graft_looped_blocks(m, max_loops=2, scope=scope, use_gradient_checkpointing=value,
                            latent_channels=3)
    assert _untouched(m, state)


@pytest.mark.parametrize("bias", [np.float32(0.5), np.float64(0.5), np.int64(0)])
def test_numpy_gate_biases_are_taken_as_floats(bias):
    m = make_net()
    parts, _ = graft_looped_blocks(m, max_loops=3, scope="stack", gate_init_bias=bias, latent_channels=3)
    assert torch.equal(parts[0].loop_gate.detach(), torch.full((2,), float(bias)))
    with pytest.raises(BackboneError, match="gate_init_bias"):
        graft_looped_blocks(make_net(), max_loops=3, gate_init_bias=np.float32("nan"), latent_channels=3)


@pytest.mark.parametrize("scope", ["block", "stack", "model"])
def test_inner_dim_other_than_the_generic_models_width_is_refused(scope):
    m = make_net(d=12)  # Net says embed_dim = 12
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(BackboneError, match=r"inner_dim=8 .* 12 wide"):
        graft_looped_blocks(m, max_loops=2, scope=scope, inner_dim=8, latent_channels=3)
    assert _untouched(m, state)
    parts, _ = graft_looped_blocks(m, max_loops=2, scope=scope, inner_dim=12, latent_channels=3)
    assert parts


def test_inner_dim_still_sets_the_width_of_a_model_that_does_not_say_it():
    class NoWidth(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(6, 6), nn.Linear(6, 6)])

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return x

    m = NoWidth()
    x = torch.randn(2, 3, 6)
    with torch.no_grad():
        ref = m(x)
    graft_looped_blocks(m, max_loops=2, inner_dim=6, latent_channels=6)
    with torch.no_grad():
        assert torch.equal(m(x), ref)


class MyWrapper(nn.Module):
    """A canvas-engineering style wrapper (its own loops, set_loops, loop_parameters)."""

    def __init__(self, block, idx, max_loops, dim):
        super().__init__()
        self.original, self.block_idx, self.max_loops, self.current_loops = block, idx, max_loops, max_loops
        self.loop_emb = nn.Parameter(torch.zeros(max_loops, dim))

    def set_loops(self, n):
        self.current_loops = min(n, self.max_loops)

    def loop_parameters(self):
        return [self.loop_emb]

    def forward(self, x):
        for i in range(self.current_loops):
            x = self.original(x + self.loop_emb[i])
        return x


class BareWrapper(MyWrapper):
    loop_parameters = None  # no loop_parameters(): its own parameters outside `original` count


@pytest.mark.parametrize("cls", [MyWrapper, BareWrapper])
def test_wrapper_class_wrappers_are_looped_parts(cls):
    m = make_net()
    parts, _ = graft_looped_blocks(m, max_loops=3, wrapper_class=cls, freeze="full", latent_channels=3)
    assert all(type(p) is cls for p in parts)
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert len(trainable) == 4 and all(any(t is p.loop_emb for p in parts) for t in trainable)
    assert loop_parts_of(m) == parts and scope_of(m) == "block"
    assert canvas_core.set_loops(m, 2) == 2 and [p.current_loops for p in parts] == [2] * 4
    assert CurriculumScheduler(max_loops=3, total_steps=3).step(m, 0) == 1
    assert [p.current_loops for p in parts] == [1] * 4
    assert RandomDepthScheduler(max_loops=5, min_loops=5).step(m, 0) == 3  # clamped: what runs
    assert [p.current_loops for p in parts] == [3] * 4
    with torch.no_grad():
        m(torch.randn(2, 5, 3))
    with pytest.raises(CanvasError, match="MyWrapper|BareWrapper"):
        canvas_core.loop_counts(m)
    with pytest.raises(BackboneError, match="already grafted"):
        graft_looped_blocks(m, max_loops=2, latent_channels=3)
    assert [type(b) for b in m.blocks] == [cls] * 4
    removed = canvas_core.ungraft_looped_blocks(m)
    assert removed == parts and not loop_parts_of(m)
    graft_looped_blocks(m, max_loops=2, latent_channels=3)  # ungrafted: may be grafted again


def test_wrapper_class_refuses_options_it_would_ignore():
    for kw in (dict(gate_init_bias=0.5), dict(sharpening=canvas_core.SharpeningSchedule(2))):
        m = make_net()
        state = {k: v.clone() for k, v in m.state_dict().items()}
        with pytest.raises(BackboneError, match="wrapper_class"):
            graft_looped_blocks(m, max_loops=2, wrapper_class=MyWrapper, latent_channels=3, **kw)
        assert _untouched(m, state)


@pytest.mark.parametrize("scope", ["stack", (1, 3), "model"])
@pytest.mark.parametrize("sched", ["curriculum", "random"])
def test_schedulers_run_span_and_model_scopes_past_max_loops_and_return_what_runs(scope, sched):
    m = make_net()
    (part,), _ = graft_looped_blocks(m, max_loops=2, scope=scope, latent_channels=3)
    s = (CurriculumScheduler(max_loops=4, total_steps=4) if sched == "curriculum"
         else RandomDepthScheduler(max_loops=4, min_loops=4))
    n = s.step(m, 3)
    assert n == 4 and part.current_loops == 4
    with torch.no_grad():
        m(torch.randn(2, 5, 3))
    assert canvas_core.loop_counts(m).tolist() == [4, 4]
    assert s.step([part], 3) == 4 and part.current_loops == 4


@pytest.mark.parametrize("sched", ["curriculum", "random"])
def test_schedulers_clamp_block_scope_and_return_the_clamped_count(sched):
    m = make_net()
    parts, _ = graft_looped_blocks(m, max_loops=2, latent_channels=3)
    s = (CurriculumScheduler(max_loops=4, total_steps=4) if sched == "curriculum"
         else RandomDepthScheduler(max_loops=4, min_loops=4))
    assert s.step(m, 3) == 2 and {p.current_loops for p in parts} == {2}


@pytest.mark.parametrize("bad", [None, 3, "blocks"])
@pytest.mark.parametrize("sched", [CurriculumScheduler, RandomDepthScheduler])
def test_schedulers_refuse_what_is_not_looped_blocks(bad, sched):
    with pytest.raises(CanvasError, match="graft_looped_blocks"):
        sched().step(bad, 0)
