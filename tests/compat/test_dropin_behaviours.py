"""The public behaviours issue 13 lists, each compared with canvas-engineering 0.5.0 (or, where
canvas-core deliberately differs, checked against the reason given in docs/design.md)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pytest

torch = pytest.importorskip("torch")
ce = pytest.importorskip("canvas_engineering")

import canvas_core as cc  # noqa: E402


def _robot(P):
    @dataclass
    class Robot:
        belief: P.Field = P.Field(2, 2, family="state")
        goal: P.Field = P.Field(1, 2, family="state")
        action: P.Field = P.Field(1, 2, family="action")

    return Robot()


@pytest.mark.parametrize("kw", [dict(spatial_shape=(16,)), dict(spatial_shape=(2, 3, 4)), dict(H=3)])
def test_layout_h_and_w(kw):
    a, b = cc.CanvasLayout(T=4, d_model=32, **kw), ce.CanvasLayout(T=4, d_model=32, **kw)
    assert (a.H, a.W, a.spatial_shape) == (b.H, b.W, tuple(b.spatial_shape))


def test_learning_compile_mode_freezes_the_region():
    def frozen(P):
        _, prog = P.compile_program(_robot(P), T=2)
        regions = dict(prog.regions)
        regions["goal"] = P.RegionProgram(family="state", learning=P.LearningSpec(compile_mode="freeze"))
        return P.ProgramCompiler(P.CanvasProgram(schema=prog.schema, regions=regions)).compile().frozen_regions

    assert frozen(cc) == frozen(ce) == {"goal"}


def test_two_state_fields_are_wired_with_integrate():
    ops = {}
    for P in (cc, ce):
        _, prog = P.compile_program(_robot(P), T=2)
        ops[P.__name__] = [(c.src, c.dst, c.operator) for c in prog.schema.topology.connections]
    assert ops["canvas_core"] == ops["canvas_engineering"]
    assert ("belief", "goal", "integrate") in ops["canvas_core"]


def test_external_clock_keeps_max_inner_steps():
    a, b = cc.ClockSpec(domain="external", max_inner_steps=4), ce.ClockSpec(domain="external", max_inner_steps=4)
    assert (a.domain, a.max_inner_steps) == (b.domain, b.max_inner_steps)


def test_family_carrier_embedding_attribute():
    bound, prog = cc.compile_program(_robot(cc), T=2)
    canvas = cc.SpatiotemporalCanvas(bound.layout, program=prog)
    assert isinstance(canvas.family_carrier_embedding, cc.FamilyCarrierEmbedding)
    assert cc.SpatiotemporalCanvas(bound.layout).family_carrier_embedding is None


def test_set_loops_clamps_like_canvas_engineering():
    ours = cc.LoopedBlockWrapper(torch.nn.Linear(8, 8), max_loops=3, embed_dim=8)
    theirs = ce.LoopedBlockWrapper(torch.nn.Linear(8, 8), max_loops=3, embed_dim=8)
    for w in (ours, theirs):
        w.set_loops(10)
    assert ours.current_loops == theirs.current_loops == 3
    # one gate fewer, by design: the first loop is the backbone block itself (docs/design.md)
    assert ours.trainable_params() == theirs.trainable_params() - 1
    assert "trainable_params=" in repr(ours)


def test_nan_residuals_are_skipped_not_absorbed():
    acc = cc.ResidualAccumulator(["x"])
    acc.update("x", torch.ones(3))
    before = acc.summaries()["x"]
    with pytest.warns(RuntimeWarning, match="NaN or inf"):
        acc.update("x", torch.tensor([1.0, float("nan")]))
    with pytest.warns(RuntimeWarning):
        acc.update("x", torch.tensor([float("inf")]))
    assert acc.summaries()["x"] == before and int(acc.step_counts[0]) == 1
    assert acc.nonfinite_updates == {"x": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        acc.update("x", torch.zeros(2))  # finite again: no warning, counted
    assert int(acc.step_counts[0]) == 2
