"""Numeric options are validated, huge ones compute without overflow, and a connection that
links nothing is warned about when it is lowered (compile, or building a layer)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import canvas_core as cc
from canvas_core.compiler import ProgramCompiler
from canvas_core.compiler.temporal import fill_frames
from canvas_core.errors import CanvasError, SizeLimitError

nan, inf = math.nan, math.inf

BAD = {
    "Connection weight=nan": lambda: cc.Connection("a", "b", weight=nan),
    "Connection weight=inf": lambda: cc.Connection("a", "b", weight=inf),
    "Connection weight=-1": lambda: cc.Connection("a", "b", weight=-1.0),
    "Connection weight=True": lambda: cc.Connection("a", "b", weight=True),
    "Connection interpolation_order=0": lambda: cc.Connection("a", "b", interpolation_order=0),
    "Connection interpolation_order=1.5": lambda: cc.Connection("a", "b", interpolation_order=1.5),
    "RegionSpec loss_weight=nan": lambda: cc.RegionSpec((0, 1, 0, 1, 0, 1), loss_weight=nan),
    "RegionSpec period=0": lambda: cc.RegionSpec((0, 1, 0, 1, 0, 1), period=0),
    "SharpeningSchedule beta_min=nan": lambda: cc.SharpeningSchedule(beta_min=nan),
    "CurriculumScheduler warmup_fraction=nan": lambda: cc.CurriculumScheduler(warmup_fraction=nan),
    "ResidualSpec decay=nan": lambda: cc.ResidualSpec(decay=nan),
    "ResidualSpec kinds=1.5": lambda: cc.ResidualSpec(kinds=1.5),
    "ActionHead hidden_dim=10**9": lambda: cc.ActionHead(4, 2, hidden_dim=10**9),
    "ActionHead latent_channels=10**9": lambda: cc.ActionHead(10**9, 2),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_numeric_option_is_a_canvas_error(name):
    with pytest.raises(CanvasError):
        BAD[name]()


def test_huge_widths_are_refused_by_the_size_limit():
    with pytest.raises(SizeLimitError, match="ActionHead hidden_dim"):
        cc.ActionHead(4, 2, hidden_dim=10**9)


@pytest.mark.parametrize("order", [2, 3, 50, 2000, 10**6])
def test_high_interpolation_order_is_finite_and_tends_to_the_nearest_frame(order):
    # target real frame 5 between destination frames 2 (real 4) and 3 (real 6, period 2), + frame 1
    got = fill_frames(5, 0, 4, 2, "interpolate", order)
    w = dict(got)
    assert all(math.isfinite(x) and x >= 0 for x in w.values())
    assert math.isclose(sum(w.values()), 1.0)
    ref = {f: abs(f * 2 - 5) ** -float(min(order, 300)) for f in w}  # 1/d^k, normalised
    s = sum(ref.values())
    for f in w:
        assert math.isclose(w[f], ref[f] / s, rel_tol=1e-9, abs_tol=1e-12)


def test_interpolation_order_2000_compiles_and_runs():
    layout = cc.CanvasLayout(T=6, H=2, W=1, d_model=4, regions={
        "a": (0, 6, 0, 1, 0, 1), "b": cc.RegionSpec((0, 6, 1, 2, 0, 1), period=2)})
    topo = cc.CanvasTopology([cc.Connection("a", "b", t_src=0, t_dst=0, temporal_fill="interpolate",
                                            interpolation_order=2000)])
    ProgramCompiler(cc.CanvasProgram(schema=cc.CanvasSchema(layout=layout, topology=topo))).compile()
    out = cc.CanvasAttention(topo, layout, n_heads=1)(torch.randn(1, 12, 4))
    assert torch.isfinite(out).all()


def _schema(*conns):
    layout = cc.CanvasLayout(T=2, H=2, W=1, d_model=4, regions={"a": (0, 1, 0, 1, 0, 1), "b": (1, 2, 1, 2, 0, 1)})
    return cc.CanvasSchema(layout=layout, topology=cc.CanvasTopology(list(conns)))


def test_connection_that_links_nothing_is_warned_at_compile():
    schema = _schema(cc.Connection("a", "b"), cc.Connection("a", "b", t_src=0, t_dst=0, temporal_fill="drop"),
                     cc.Connection("a", "b", t_src=7, t_dst=0))
    with pytest.warns(UserWarning) as rec:
        ProgramCompiler(cc.CanvasProgram(schema=schema)).compile()
    msgs = [str(w.message) for w in rec if "links nothing" in str(w.message)]
    assert len(msgs) == 2
    assert msgs[0].startswith("connection #1 'a' -> 'b' links nothing") and "t_src=0, t_dst=0" in msgs[0]
    assert msgs[1].startswith("connection #2") and "t_src=7" in msgs[1]
    assert all(w.filename == __file__ for w in rec if "links nothing" in str(w.message))  # points at the caller


def test_connections_that_link_say_nothing():
    schema = _schema(cc.Connection("a", "b"), cc.Connection("b", "a", t_src=0, t_dst=-1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ProgramCompiler(cc.CanvasProgram(schema=schema)).compile()
        cc.CanvasAttention(schema.topology, schema.layout, n_heads=1)


def test_restrict_refuses_a_string_of_region_names():
    from canvas_core.compiler.lowering import lower, restrict

    schema = _schema(cc.Connection("a", "b"))
    plan = lower(schema.topology, schema.layout)
    with pytest.raises(CanvasError, match="the string 'ab'"):
        restrict(plan, "ab")
    assert restrict(plan, {"a"}).groups


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0, "x"])
def test_a_sharpening_schedule_returning_garbage_is_named(bad):
    from torch import nn

    class Block(nn.Module):  # holds an attention object with a `beta` the wrapper sets per loop
        def __init__(self):
            super().__init__()
            self.attn = cc.CanvasAttention(cc.CanvasTopology([cc.Connection("a", "b")]), cc.CanvasLayout(
                T=2, H=1, W=1, d_model=4, regions={"a": (0, 1, 0, 1, 0, 1), "b": (1, 2, 0, 1, 0, 1)}), n_heads=1)

        def forward(self, h):
            return h

    w = cc.LoopedBlockWrapper(Block(), 0, 2, 4, sharpening=lambda i: bad)
    with pytest.raises(CanvasError, match="sharpening schedule returned"):
        w(torch.zeros(1, 2, 4))
