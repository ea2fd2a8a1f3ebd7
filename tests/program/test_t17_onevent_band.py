"""OnEvent's gt / lt assigned after construction are checked as a pair at the next use, so a band
can be moved in either order (gt first to a value above the old lt included); the constructor
still refuses an empty band at once."""

import pytest

from canvas_core.errors import CanvasError, SchemaError
from canvas_core.program.clock_ir import And, ClockContext, ClockExpr, OnEvent, Periodic


def _at(value: float) -> ClockContext:
    return ClockContext(summaries={"r": {"loss": value}})


@pytest.mark.parametrize("order", [("gt", "lt"), ("lt", "gt")])
def test_a_band_moves_up_in_either_order(order):
    e = OnEvent("r.loss", gt=0.0, lt=1.0)
    for name in order:
        setattr(e, name, {"gt": 5.0, "lt": 10.0}[name])
    assert e.to_dict() == {"type": "on_event", "source": "r.loss", "gt": 5.0, "lt": 10.0}
    assert e.evaluate(_at(7.0)) and not e.evaluate(_at(0.5))
    assert e == ClockExpr.from_dict(e.to_dict()) and hash(e) == hash(OnEvent("r.loss", gt=5.0, lt=10.0))


def test_a_band_moves_down_through_an_empty_one():
    e = OnEvent("r.loss", gt=5.0, lt=10.0)
    e.lt = 2.0  # empty for now: gt is set next
    e.gt = 1.0
    assert e.evaluate(_at(1.5)) and not e.evaluate(_at(7.0))


def test_both_bounds_cleared_then_one_set():
    e = OnEvent("r.loss", gt=0.5)
    e.gt = None
    e.lt = 0.2
    assert e.to_dict() == {"type": "on_event", "source": "r.loss", "lt": 0.2}


@pytest.mark.parametrize("use", [
    lambda e: e.evaluate(_at(3.0)),
    lambda e: e.to_dict(),
    lambda e: hash(e),
    lambda e: e == OnEvent("r.loss", gt=5.0),
    lambda e: And(Periodic(1), e).evaluate(_at(3.0)),
    lambda e: And(Periodic(1), e).to_dict(),
])
def test_an_empty_band_left_behind_is_refused_at_use(use):
    e = OnEvent("r.loss", gt=0.0, lt=1.0)
    e.gt = 5.0
    with pytest.raises(SchemaError, match=r"can never fire.*OnEvent\.gt and OnEvent\.lt"):
        use(e)
    e.lt = 10.0  # fixed: usable again, nothing lost
    assert e.evaluate(_at(7.0))


def test_no_bound_left_is_refused_at_use_naming_both_fields():
    e = OnEvent("r.loss", gt=0.5)
    e.gt = None
    with pytest.raises(SchemaError, match=r"at least one of gt= or lt=.*OnEvent\.gt and OnEvent\.lt"):
        e.to_dict()


def test_each_bound_is_still_checked_as_a_number_at_once():
    e = OnEvent("r.loss", gt=0.5)
    with pytest.raises(SchemaError, match="OnEvent.lt"):
        e.lt = "1.0"
    assert e.to_dict() == {"type": "on_event", "source": "r.loss", "gt": 0.5}


@pytest.mark.parametrize("gt,lt", [(0.9, 0.1), (0.5, 0.5), (None, None), (float("inf"), None)])
def test_the_constructor_still_refuses_an_empty_band(gt, lt):
    with pytest.raises(SchemaError):
        OnEvent("r.loss", gt=gt, lt=lt)
    with pytest.raises(CanvasError):
        ClockExpr.from_dict({"type": "on_event", "source": "r.loss", **{k: v for k, v in (("gt", gt), ("lt", lt))
                                                                         if v is not None}})
