"""Clock expressions built deeper than from_dict accepts, and ClockContext fields of the wrong
kind: refused where they are made, naming the node or field."""

from __future__ import annotations

import pytest

from canvas_core.errors import CanvasTypeError, ProgramError
from canvas_core.program.clock_ir import MAX_DEPTH, And, ClockContext, ClockExpr, Not, OnEvent, Periodic


def test_a_chain_of_ands_deeper_than_max_depth_is_refused_when_built():
    clock = Periodic(2)
    with pytest.raises(ProgramError, match=rf"And.left: this clock expression would be nested more than {MAX_DEPTH}"):
        for _ in range(5000):
            clock = clock & Periodic(3)


def test_a_chain_of_nots_is_refused_too():
    clock = Periodic(2)
    with pytest.raises(ProgramError, match=r"Not.child: .*nested more than"):
        for _ in range(5000):
            clock = ~clock


def test_the_deepest_accepted_tree_still_works_and_round_trips():
    clock = Periodic(2)
    for _ in range(MAX_DEPTH - 1):
        clock = Not(clock)
    assert clock.evaluate(ClockContext(external_t=1)) is (MAX_DEPTH % 2 == 0)
    assert ClockExpr.from_dict(clock.to_dict()) == clock
    with pytest.raises(ProgramError):
        Not(clock)
    wide = And(clock.child, Periodic(3))  # one level below the limit on the left: at the limit
    assert ClockExpr.from_dict(wide.to_dict()) == wide
    with pytest.raises(ProgramError):
        And(Periodic(3), wide)  # the deeper side counts


@pytest.mark.parametrize("kw, field", [
    ({"external_t": "3"}, "external_t"), ({"external_t": 2.5}, "external_t"), ({"external_t": True}, "external_t"),
    ({"last_fired": None}, "last_fired"), ({"cooldown_until": 1.5}, "cooldown_until"),
    ({"summaries": [("a", 1.0)]}, "summaries"), ({"boundary": 3}, "boundary"),
])
def test_a_context_field_of_the_wrong_kind_is_named(kw, field):
    with pytest.raises(CanvasTypeError, match=rf"ClockContext {field} must be"):
        ClockContext(**kw)


def test_integer_like_steps_are_accepted():
    np = pytest.importorskip("numpy")
    ctx = ClockContext(external_t=np.int64(4), summaries={"a": {"err": 1.0}}, boundary="reset")
    assert Periodic(2).evaluate(ctx) and OnEvent("a.err", gt=0.5).evaluate(ctx)
