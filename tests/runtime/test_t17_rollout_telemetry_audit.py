"""Rollouts and telemetry recordings belong to one model object; a failed step measures nothing.

* A copy of a model taken inside ``incremental(...)`` (``copy.deepcopy``, an EMA ``AveragedModel``,
  ``torch.save``) is a plain model that computes with its own parameters; a ``Rollout`` itself is
  refused by copy and pickle with a ``RolloutError``.
* A copy taken inside ``record_telemetry(...)`` carries none of the recording's hooks, and the
  recorded model pickles.
* ``roll.detach()`` lets a step's loss be backwarded on its own (truncated BPTT).
* A rollout step that fails (the model raises, or ``check=`` finds a difference) and a whole-canvas
  forward that raises add nothing to a recording.
* ``check=`` names parameters written since the episode began (an optimizer step).
* The sampled queries of telemetry include one of every connection (a one-position region), and a
  connection that links no query is reported as 0.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

import canvas_core
from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection as C, record_telemetry, telemetry
from canvas_core.runtime.incremental import RolloutError
from tests.runtime._rollout_models import build_model, frames

T, V = 3, 6
LAYOUT = CanvasLayout(T=T, H=2, W=3, d_model=8, regions={"a": (0, T, 0, 1, 0, 3), "b": (0, T, 1, 2, 0, 3)})


def _topo(fn: str = "cross_attention") -> CanvasTopology:
    return CanvasTopology(connections=[C(src="a", dst="a", t_src=0, t_dst=0),
                                       C(src="a", dst="b", t_src=0, t_dst=-1, fn=fn),
                                       C(src="b", dst="b", t_src=0, t_dst=-1),
                                       C(src="b", dst="a", t_src=0, t_dst=0, fn="pooling")])


def _x(seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(2, T * V, 8, dtype=torch.float64)


def _layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, CanvasAttention)]


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# --- copies of a model inside a rollout -------------------------------------------------------------
def test_a_deepcopy_inside_a_rollout_computes_with_its_own_parameters():
    model, x = build_model(_topo(), LAYOUT, 2), _x()
    with canvas_core.incremental(model, LAYOUT) as roll:
        roll.step(frames(x, V)[0])
        clone = copy.deepcopy(model)
    assert all("_updates" not in layer.__dict__ for layer in _layers(clone))
    with torch.no_grad():
        for p in clone.parameters():
            p.mul_(2)
        plain = copy.deepcopy(clone)  # taken outside any rollout
        assert torch.equal(clone(x), plain(x))
        assert not torch.allclose(clone(x), model(x))
    with canvas_core.incremental(clone, LAYOUT) as roll2, torch.no_grad():  # not "already in a rollout"
        ys = [roll2.step(f) for f in frames(x, V)]
        assert torch.allclose(torch.cat(ys, 1), plain(x), atol=1e-10)


def test_an_ema_copy_made_inside_a_rollout_gets_its_own_gradients():
    model = nn.Sequential(CanvasAttention(_topo(), LAYOUT, n_heads=2))
    with warnings.catch_warnings(), canvas_core.incremental(model, LAYOUT):
        warnings.simplefilter("ignore")
        ema = AveragedModel(model)
    ema(torch.randn(1, T * V, 8)).pow(2).sum().backward()
    assert all(p.grad is None for p in model.parameters())
    assert any(p.grad is not None for p in ema.parameters())


def test_a_model_saved_inside_a_rollout_loads_as_a_plain_model():
    model, x = build_model(_topo(), LAYOUT, 1), _x()
    with canvas_core.incremental(model, LAYOUT) as roll, torch.no_grad():
        roll.step(frames(x, V)[0])
        buf = io.BytesIO()
        torch.save(model, buf)
        shallow = copy.copy(model[0].attn)
    assert "_updates" not in shallow.__dict__
    assert not any("__getstate__" in m.__dict__ or "_updates" in m.__dict__ for m in model.modules())
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert all("_updates" not in layer.__dict__ for layer in _layers(loaded))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle", "torch.save"])
def test_a_rollout_itself_is_refused_by_copy_and_pickle(how):
    model = build_model(_topo(), LAYOUT, 1)
    with canvas_core.incremental(model, LAYOUT) as roll:
        do = {"copy": copy.copy, "deepcopy": copy.deepcopy, "pickle": pickle.dumps,
              "torch.save": lambda r: torch.save(r, io.BytesIO())}[how]
        with pytest.raises(RolloutError, match="cannot be copied or saved.*incremental.*state_dict"):
            do(roll)
        with torch.no_grad():
            roll.step(frames(_x(), V)[0])  # the rollout goes on


# --- copies of a model inside a recording -------------------------------------------------------------
def test_a_copy_made_inside_a_recording_has_none_of_its_hooks_and_the_model_pickles():
    model, x = build_model(_topo("mamba"), LAYOUT, 2), _x()
    with torch.no_grad(), record_telemetry(model) as tel:
        model(x)
        clone = copy.deepcopy(model)
        buf = io.BytesIO()
        torch.save(model, buf)
        clone(x * 10)  # not recorded: the recording is the original's
    assert _hooks(clone) == 0 and _hooks(model) == 0
    assert not any("__getstate__" in m.__dict__ for m in model.modules())  # the original as it was
    with torch.no_grad(), record_telemetry(model) as ref:
        model(x)
    assert tel.forwards == ref.forwards == 1 and tel.values() == pytest.approx(ref.values())
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert _hooks(loaded) == 0
    with torch.no_grad(), record_telemetry(clone) as own:
        clone(x)
    assert own.forwards == 1 and own.values() == pytest.approx(ref.values())


# --- per-step backward ------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", ["cross_attention", "mamba"])
def test_detach_lets_every_step_backward_its_own_loss(fn):
    model, x = build_model(_topo(fn), LAYOUT, 2), _x()
    fs = frames(x, V)
    got = []
    with canvas_core.incremental(model, LAYOUT) as roll:
        for f in fs:
            model.zero_grad()
            roll.step(f).pow(2).sum().backward()
            roll.detach()
            got.append([p.grad.clone() if p.grad is not None else None for p in model.parameters()])
    for t in range(T):  # reference: earlier frames stepped without gradient, frame t with it
        model.zero_grad()
        with canvas_core.incremental(model, LAYOUT) as roll:
            with torch.no_grad():
                for f in fs[:t]:
                    roll.step(f)
            roll.step(fs[t]).pow(2).sum().backward()
        for a, p in zip(got[t], model.parameters()):
            assert (a is None) == (p.grad is None)
            if a is not None:
                assert torch.allclose(a, p.grad, atol=1e-10)


# --- a failed step measures nothing --------------------------------------------------------------
class _Boom(nn.Module):
    """Raises while ``fail`` is set; adds ``x.mean(1)`` (mixes positions) while ``mix`` is set."""

    fail = mix = False

    def forward(self, x):
        if self.fail:
            raise RuntimeError("boom")
        return x + x.mean(1, keepdim=True) if self.mix else x


def _boom_model():
    model = build_model(_topo("mamba"), LAYOUT, 2)
    model.insert(1, _Boom())
    return model


@pytest.mark.parametrize("how", ["raises", "check"])
def test_a_failed_rollout_step_adds_nothing_to_the_recording(how):
    model, x = _boom_model(), _x()
    fs, boom = frames(x, V), model[1]
    check = how == "check"
    with torch.no_grad(), record_telemetry(model) as ref, canvas_core.incremental(model, LAYOUT, check=check) as roll:
        for f in fs:
            roll.step(f)
    with torch.no_grad(), record_telemetry(model) as tel, canvas_core.incremental(model, LAYOUT, check=check) as roll:
        roll.step(fs[0])
        boom.fail, boom.mix = how == "raises", how == "check"
        with pytest.raises(RolloutError):
            roll.step(fs[1] * 5)
        boom.fail = boom.mix = False
        roll.step(fs[1])
        roll.step(fs[2])
    assert tel.forwards == ref.forwards == T
    assert tel.values() == pytest.approx(ref.values(), rel=1e-9, abs=1e-12)


def test_a_whole_canvas_forward_that_raises_adds_nothing_to_the_recording():
    model, x = _boom_model(), _x()
    boom = model[1]
    with torch.no_grad(), record_telemetry(model) as ref:
        model(x)
    with torch.no_grad(), record_telemetry(model) as tel:
        model(x)
        boom.fail = True
        with pytest.raises(RuntimeError, match="boom"):
            model(x * 5)
        boom.fail = False
    assert tel.forwards == 1
    assert tel.values() == pytest.approx(ref.values(), rel=1e-9, abs=1e-12)


# --- check= names parameters changed mid-episode ---------------------------------------------------
def test_check_names_the_parameters_an_optimizer_step_changed():
    model, x = build_model(_topo(), LAYOUT, 2), _x()
    fs = frames(x, V)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with canvas_core.incremental(model, LAYOUT, check=True) as roll:
        roll.step(fs[0]).pow(2).sum().backward()
        opt.step()
        with pytest.raises(RolloutError, match=r"(?s)changed since frame 0.*optimizer step.*roll\.reset\(\)"):
            roll.step(fs[1])
        roll.reset()  # the advice works
        with torch.no_grad():
            for f in fs:
                roll.step(f)


def test_check_without_parameter_changes_does_not_blame_them():
    model, x = _boom_model(), _x()
    model[1].mix = True
    with torch.no_grad(), canvas_core.incremental(model, LAYOUT, check=True) as roll:
        with pytest.raises(RolloutError) as err:
            for f in frames(x, V):
                roll.step(f)
    assert "changed since" not in str(err.value) and "mixes positions" in str(err.value)


# --- sampled queries ------------------------------------------------------------------------------------
@pytest.mark.parametrize("w", [0, 5])
def test_a_connection_of_a_one_position_region_is_measured(w):
    layout = CanvasLayout(T=32, H=8, W=8, d_model=8, regions={
        "a": (0, 32, 0, 3, 0, 8), "m": (0, 1, 7, 8, w, w + 1), "z": (0, 32, 3, 7, 0, 8)})
    topo = CanvasTopology(connections=[C(src="a", dst="a", t_src=0, t_dst=0), C(src="m", dst="a", t_src=0, t_dst=0),
                                       C(src="z", dst="z", t_src=0, t_dst=0)])
    layer = CanvasAttention(topo, layout, n_heads=2)
    with torch.no_grad(), record_telemetry(layer, max_queries=16) as tel:
        layer(torch.randn(1, layout.num_positions, 8))
    vals = tel.values()
    assert vals["CanvasAttention/#1 m->a [cross_attention]/mass_share"] == pytest.approx(1.0)
    assert "m->a" in tel.summary()
    assert len(tel._probes[0].sample) <= 16 + len(topo.connections)


def test_a_connection_that_links_no_query_is_reported_as_zero():
    layout = CanvasLayout(T=T, H=2, W=3, d_model=8, regions={
        "a": (0, T, 0, 1, 0, 3), "m": (0, 1, 1, 2, 0, 1), "b": (0, T, 1, 2, 1, 3)})
    topo = CanvasTopology(connections=[C(src="a", dst="a", t_src=0, t_dst=0), C(src="m", dst="a", t_src=1, t_dst=1),
                                       C(src="b", dst="b", t_src=0, t_dst=0, fn="pooling"),
                                       C(src="m", dst="b", t_src=1, t_dst=0, fn="pooling")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the lowering warns that #1 and #3 link nothing
        layer = CanvasAttention(topo, layout, n_heads=2)
    with torch.no_grad(), record_telemetry(layer) as tel:
        assert tel.values() == {}  # before any forward: no shares at all
        layer(torch.randn(1, layout.num_positions, 8))
    vals = tel.values()
    for label in ("#1 m->a [cross_attention]", "#3 m->b [pooling]"):
        assert vals[f"CanvasAttention/{label}/mass_share"] == 0.0
        assert vals[f"CanvasAttention/{label}/out_norm"] == 0.0
    assert "linking no query" in tel.summary() and "#3 m->b" in tel.summary().splitlines()[-1]
    assert set(telemetry(layer, torch.randn(1, layout.num_positions, 8))) == set(vals)
