"""RegionScheduler, LearnedScheduler, ResidualAccumulator, ActionHead."""

from __future__ import annotations

import pytest
import torch

from canvas_core.errors import CanvasTypeError, ShapeError, UnknownRegionError
from canvas_core.program import CanvasProgram, ClockSpec, RegionProgram
from canvas_core.runtime.heads import ActionHead
from canvas_core.runtime.residuals import ResidualAccumulator, ResidualSpec
from canvas_core.runtime.scheduling import LearnedScheduler, RegionScheduler
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology


def _program(clocks, extra=()):
    names = ["a", "b", "c", "d", "e", "f", *extra]
    layout = CanvasLayout(
        T=1,
        spatial_shape=(len(names),),
        d_model=8,
        regions={n: (0, 1, i, i + 1) for i, n in enumerate(names)},
    )
    schema = CanvasSchema(layout=layout, topology=CanvasTopology(connections=[]))
    return CanvasProgram(
        schema=schema, regions={n: RegionProgram(clock=c) for n, c in clocks.items()}
    )


def _fired(sched, name, steps, summaries=lambda t: None, boundary=lambda t: None):
    return [t for t in range(steps) if name in sched.step(t, summaries(t), boundary(t))]


def test_periodic_and_no_clock():
    s = RegionScheduler(_program({"a": ClockSpec(period=3), "b": None}))
    active = [s.step(t) for t in range(7)]
    assert [t for t, a in enumerate(active) if "a" in a] == [0, 3, 6]
    assert all("b" in a and "f" in a for a in active)  # no clock / no program: always


def test_cooldown():
    s = RegionScheduler(_program({"a": ClockSpec(period=1, cooldown=2)}))
    assert _fired(s, "a", 9) == [0, 2, 4, 6, 8]
    s = RegionScheduler(_program({"a": ClockSpec(period=1, cooldown=3)}))
    assert _fired(s, "a", 9) == [0, 3, 6]


def test_on_event_and_max_silence():
    clock = ClockSpec(
        mode="on_event", event_source="err.x.prediction", event_threshold=0.5, max_silence=4
    )
    s = RegionScheduler(_program({"a": clock}, extra=("err.x",)))  # a region name with a dot
    summaries = lambda t: {"err.x": {"prediction": 0.9 if t == 2 else 0.1}}  # noqa: E731
    # t=0: never fired -> forced; t=2: event; t=6: 4 silent steps since 2
    assert _fired(s, "a", 9, summaries) == [0, 2, 6]
    s.reset()
    assert _fired(s, "a", 3, summaries) == [0, 2]


def test_boundary_and_step_plan():
    s = RegionScheduler(
        _program(
            {
                "a": ClockSpec(mode="boundary", event_source="episode_end"),
                "b": ClockSpec(domain="internal", period=2, max_inner_steps=3),
            }
        )
    )
    assert _fired(s, "a", 6, boundary=lambda t: "episode_end" if t == 4 else None) == [4]
    s.reset()
    plan = s.step_plan(0)
    assert "b" in plan[0] and plan[1:] == [{"b"}, {"b"}, {"b"}]
    assert len(s.step_plan(1)) == 1


def test_clock_expressions_duck_typed():
    class EveryOther:
        def __init__(self):
            self.seen = []

        def evaluate(self, ctx):
            self.seen.append((ctx.external_t, ctx.last_fired))
            return ctx.external_t % 2 == 1

    expr = EveryOther()
    s = RegionScheduler(_program({}), clocks={"c": expr})
    assert _fired(s, "c", 6) == [1, 3, 5]
    assert expr.seen[2] == (2, 1)  # context carries the region's last firing
    with pytest.raises(UnknownRegionError):
        RegionScheduler(_program({}), clocks={"zz": expr})
    with pytest.raises(CanvasTypeError):
        RegionScheduler(_program({}), clocks={"c": 3})


def test_expression_cooldown_sets_cooldown_until():
    class Always:
        def evaluate(self, ctx):
            return True

    class Cooldown:  # the clock-IR decorator protocol: suppressed while t < cooldown_until
        def __init__(self, child, steps):
            self.child, self.steps = child, steps

        def evaluate(self, ctx):
            return ctx.external_t >= ctx.cooldown_until and self.child.evaluate(ctx)

    s = RegionScheduler(_program({}), clocks={"c": Cooldown(Always(), steps=3)})
    assert _fired(s, "c", 8) == [0, 3, 6]


def test_clock_ir_if_available():
    import canvas_core.program.clock_ir as clock_ir
    s = RegionScheduler(_program({}), clocks={"c": clock_ir.Periodic(3)})
    assert _fired(s, "c", 7) == [0, 3, 6]


def test_learned_scheduler():
    torch.manual_seed(0)
    ls = LearnedScheduler(n_regions=5, summary_dim=10, max_active=3)
    ls.eval()
    x = torch.randn(10)
    active, logp = ls(x)
    assert len(active) == 3 and logp.shape == (5,)
    assert torch.allclose(logp.exp().sum(), torch.tensor(1.0))
    assert active == set(ls.scorer(x).topk(3).indices.tolist())
    assert ls(torch.stack([x, -x]))[0] == active
    logp.sum().backward()
    ls.train()
    assert len(ls(x)[0]) == 3
    assert ls.select(x, list("abcde")) <= set("abcde")
    with pytest.raises(ShapeError):
        ls(torch.randn(7))


def test_residual_accumulator_ema():
    spec = ResidualSpec(kinds=("p", "n", "x"), reduce="max_mean", decay=0.5)
    acc = ResidualAccumulator(["a", "b.err"], spec)
    e = torch.tensor([[-3.0, 1.0], [2.0, -0.5]])
    ref = [0.0, 0.0, 0.0]
    for _ in range(3):
        acc.update("a", e)
        new = [e.max().item(), e.mean().item(), e.max().item()]
        ref = [0.5 * r + 0.5 * n for r, n in zip(ref, new)]
    got = acc.summaries()
    assert got["b.err"] == {"p": 0.0, "n": 0.0, "x": 0.0}
    assert all(abs(got["a"][k] - r) < 1e-6 for k, r in zip("pnx", ref))
    assert acc.summary_tensor().shape == (2, 3)
    for mode, fn in (("mean", torch.mean), ("max", torch.max), ("l2", torch.linalg.norm)):
        a = ResidualAccumulator(["r"], ResidualSpec(reduce=mode, decay=0.9))
        a.update("r", e)
        assert abs(a.summaries()["r"]["prediction"] - 0.1 * fn(e).item()) < 1e-6
    acc.reset()
    assert acc.summary_tensor().abs().sum() == 0
    with pytest.raises(UnknownRegionError, match="'b.err'"):
        acc.update("b", e)
    with pytest.raises(CanvasTypeError):
        ResidualSpec(reduce="median")
    with pytest.raises(CanvasTypeError):
        ResidualSpec(decay=1.5)


def test_action_head_shapes_and_pooling():
    torch.manual_seed(0)
    h = ActionHead(16, 7)
    assert h.hidden_dim == 8
    x = torch.randn(2, 3, 16, 4, 4)
    out = h(x)
    assert out.shape == (2, 7)
    assert torch.allclose(out, h(x.mean(dim=(1, 3, 4))), atol=1e-6)
    assert h(torch.randn(2, 16)).shape == (2, 7)
    assert h(torch.randn(2, 3, 16)).shape == (2, 7)
    assert h(torch.randn(2, 3, 16, 5, 2, 2)).shape == (2, 7)
    with pytest.raises(ShapeError):
        h(torch.randn(2, 15))


def test_action_head_validates_before_computing_defaults_and_refuses_empty_inputs():
    from canvas_core.errors import CanvasError

    for args in (("8", 4), (8.0, 4), (None, 4)):
        with pytest.raises(CanvasError, match="latent_channels"):
            ActionHead(*args)
    h = ActionHead(8, 4)
    for shape in ((2, 0, 8), (0, 8), (2, 3, 8, 0)):
        with pytest.raises(CanvasError, match="empty"):
            h(torch.zeros(shape))
    assert torch.isfinite(h(torch.randn(2, 3, 8, 2, 2))).all()
