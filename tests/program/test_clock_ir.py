"""Clock expressions: evaluation, combinators, decorators, round trips, malformed dicts."""

import json

import pytest
from hypothesis import given, settings, strategies as st

from canvas_core import (And, BoundaryExpr, CanvasError, ClockContext, ClockCooldown, ClockExpr,
                         ClockMaxSilence, Cooldown, MaxSilence, Not, OnEvent, Or, Periodic,
                         clock_boundary, clock_on, clock_periodic)


def ctx(t=0, **kw):
    return ClockContext(external_t=t, **kw)


def test_periodic_and_sugar():
    e = clock_periodic(3)
    assert isinstance(e, Periodic) and [e.evaluate(ctx(t)) for t in range(7)] == [t % 3 == 0 for t in range(7)]


def test_on_event_thresholds_and_band():
    s = {"vision.prediction": {"err": 0.7}}
    assert clock_on("vision.prediction.err", gt=0.5).evaluate(ctx(summaries=s))
    assert not clock_on("vision.prediction.err", gt=0.8).evaluate(ctx(summaries=s))
    assert OnEvent("vision.prediction.err", gt=0.5, lt=0.8).evaluate(ctx(summaries=s))
    assert not OnEvent("vision.prediction.err", gt=0.5, lt=0.6).evaluate(ctx(summaries=s))
    assert not OnEvent("other.err", lt=1.0).evaluate(ctx(summaries=s))  # missing summary never fires
    with pytest.raises(CanvasError):
        OnEvent("vision.err")  # no threshold


def test_boundary_and_combinators():
    b = clock_boundary("episode_end")
    assert isinstance(b, BoundaryExpr)
    assert b.evaluate(ctx(boundary="episode_end")) and not b.evaluate(ctx(boundary="other"))
    p2, p3 = Periodic(2), Periodic(3)
    for t in range(12):
        c = ctx(t)
        assert And(p2, p3).evaluate(c) == (t % 6 == 0)
        assert Or(p2, p3).evaluate(c) == (t % 2 == 0 or t % 3 == 0)
        assert Not(p2).evaluate(c) == (t % 2 != 0)
        assert (p2 | p3).evaluate(c) == Or(p2, p3).evaluate(c)


def test_cooldown_and_max_silence():
    assert ClockCooldown is Cooldown and ClockMaxSilence is MaxSilence
    cd = Cooldown(Periodic(1), steps=3)
    assert not cd.evaluate(ctx(4, cooldown_until=5)) and cd.evaluate(ctx(5, cooldown_until=5))
    ms = MaxSilence(Periodic(100), steps=4)
    assert not ms.evaluate(ctx(3, last_fired=0)) and ms.evaluate(ctx(4, last_fired=0))
    assert ms.evaluate(ctx(0))  # t=0 is a Periodic fire


leaves = st.one_of(
    st.builds(Periodic, st.integers(1, 9), st.sampled_from(["external", "internal", "boundary"])),
    st.builds(OnEvent, st.sampled_from(["a.err", "b.c.surprise"]), st.floats(-5, 5), st.none()),
    st.builds(OnEvent, st.sampled_from(["a.err"]), st.none(), st.floats(-5, 5)),
    st.builds(BoundaryExpr, st.sampled_from(["episode_end", "reset"])),
)
exprs = st.recursive(leaves, lambda ch: st.one_of(
    st.builds(And, ch, ch), st.builds(Or, ch, ch), st.builds(Not, ch),
    st.builds(Cooldown, ch, st.integers(0, 5)), st.builds(MaxSilence, ch, st.integers(1, 9))), max_leaves=8)


@settings(max_examples=50, deadline=None)
@given(exprs, st.integers(0, 30), st.floats(-6, 6), st.sampled_from([None, "reset", "episode_end"]),
       st.integers(-1, 30), st.integers(0, 30))
def test_round_trip_is_exact_and_evaluates_the_same(e, t, v, b, last, cdu):
    d = e.to_dict()
    back = ClockExpr.from_dict(json.loads(json.dumps(d)))
    assert back == e and back.to_dict() == d
    c = ClockContext(external_t=t, summaries={"a": {"err": v}, "b.c": {"surprise": -v}}, boundary=b,
                     last_fired=last, cooldown_until=cdu)
    assert back.evaluate(c) == e.evaluate(c)


@pytest.mark.parametrize("bad", [
    None, [], {}, {"type": "nope"}, {"type": "periodic", "period": 0}, {"type": "periodic", "period": "2"},
    {"type": "periodic", "extra": 1}, {"type": "and", "left": {"type": "periodic"}},
    {"type": "not", "child": 3}, {"type": "on_event", "source": "a.b"},
    {"type": "cooldown", "child": {"type": "periodic"}, "steps": -1},
    {"type": "periodic", "domain": "galactic"}, {"type": "boundary", "name": ""},
])
def test_malformed_dict_is_canvas_error(bad):
    with pytest.raises(CanvasError):
        ClockExpr.from_dict(bad)


def test_combinator_needs_expr():
    with pytest.raises(CanvasError):
        And(Periodic(1), "always")


def test_malformed_dict_names_the_problem():
    from canvas_core.errors import SchemaFormatError
    with pytest.raises(SchemaFormatError, match="unknown type 'nope'"):
        ClockExpr.from_dict({"type": "nope"})
    with pytest.raises(SchemaFormatError, match="right"):
        ClockExpr.from_dict({"type": "or", "left": {"type": "periodic"}})
    with pytest.raises(SchemaFormatError, match="period"):
        ClockExpr.from_dict({"type": "periodic", "period": 2.5})
    with pytest.raises(SchemaFormatError, match="list"):
        ClockExpr.from_dict([1])


def test_module_level_from_dict_and_operators():
    from canvas_core.program import clock_ir
    e = (Periodic(2) & ~clock_boundary("reset")) | clock_on("a.err", gt=1)
    assert isinstance(e, Or) and isinstance(e.left, And) and isinstance(e.left.right, Not)
    assert clock_ir.from_dict(e.to_dict()) == e
    cd = Cooldown(Periodic(1), steps=4)
    assert cd.steps == 4 and cd.child == Periodic(1)


def test_max_silence_fires_when_never_fired():
    ms = MaxSilence(Periodic(100), steps=5)
    assert [ms.evaluate(ctx(t, last_fired=-1)) for t in range(1, 5)] == [True] * 4
    assert [ms.evaluate(ctx(t, last_fired=2)) for t in range(3, 9)] == [t - 2 >= 5 for t in range(3, 9)]


def test_on_event_source_split_last_dot_then_first():
    e = clock_on("a.b.c", gt=0)
    assert e.evaluate(ctx(summaries={"a.b": {"c": 1.0}}))  # canvas-engineering: last dot (dotted region)
    assert e.evaluate(ctx(summaries={"a": {"b.c": 1.0}}))  # fallback: dotted kind name
    assert not e.evaluate(ctx(summaries={"a": {"c": 1.0}}))
    # both readings present: the last-dot one wins, as in canvas-engineering
    assert not e.evaluate(ctx(summaries={"a.b": {"c": -1.0}, "a": {"b.c": 1.0}}))


@settings(max_examples=40, deadline=None)
@given(exprs, st.integers(0, 30), st.floats(-6, 6), st.sampled_from([None, "reset", "episode_end"]),
       st.integers(-1, 30), st.integers(0, 30))
def test_same_dicts_and_decisions_as_canvas_engineering(e, t, v, b, last, cdu):
    ce = pytest.importorskip("canvas_engineering.clock_ir")
    theirs = ce.ClockExpr.from_dict(e.to_dict())
    assert theirs.to_dict() == e.to_dict()  # same JSON format both ways
    assert ClockExpr.from_dict(theirs.to_dict()) == e
    summ = {"a": {"err": v}}
    mine_ctx = ClockContext(external_t=t, summaries=summ, boundary=b, last_fired=last, cooldown_until=cdu)
    ce_ctx = ce.ClockContext(external_t=t, summaries=summ, boundary=b, last_fired=last, cooldown_until=cdu)
    if "b.c" not in repr(e.to_dict()):  # a source whose region has no summary: ce reads 0.0
        assert e.evaluate(mine_ctx) == theirs.evaluate(ce_ctx)
