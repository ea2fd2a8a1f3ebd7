"""ClockContext steps: an integral float (10.0) is that step, as in canvas-engineering; a
fractional one is refused, also when it arrives as a float tensor."""

from __future__ import annotations

import pytest

from canvas_core.errors import CanvasTypeError
from canvas_core.program.clock_ir import ClockContext, Cooldown, MaxSilence, Periodic


@pytest.mark.parametrize("key", ["external_t", "last_fired", "cooldown_until"])
def test_an_integral_float_step_is_that_integer(key):
    ctx = ClockContext(**{key: 10.0})
    assert getattr(ctx, key) == 10 and type(getattr(ctx, key)) is int


def test_integral_float_steps_schedule_like_canvas_engineering():
    ce_ir = pytest.importorskip("canvas_engineering.clock_ir")
    for t in (0.0, 3.0, 10.0, 15.0):
        for ours, theirs in ((Periodic(5), ce_ir.Periodic(5)),
                             (MaxSilence(Periodic(7), 4), ce_ir.MaxSilence(ce_ir.Periodic(7), 4))):
            got = ours.evaluate(ClockContext(external_t=t, last_fired=2.0))
            assert got == bool(theirs.evaluate(ce_ir.ClockContext(external_t=t, last_fired=2.0)))
    assert Cooldown(Periodic(1), 3).evaluate(ClockContext(external_t=6.0, cooldown_until=6.0))


def test_numpy_and_tensor_steps():
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    assert ClockContext(external_t=np.float64(8.0)).external_t == 8
    assert ClockContext(external_t=torch.tensor(8.0)).external_t == 8
    assert ClockContext(external_t=torch.tensor(8)).external_t == 8


@pytest.mark.parametrize("value", [2.5, float("nan"), float("inf"), "10", True, [1]], ids=repr)
def test_a_step_that_is_no_integer_is_refused_by_name(value):
    with pytest.raises(CanvasTypeError, match=r"ClockContext external_t must be an integer step .*such as 10\.0"):
        ClockContext(external_t=value)


def test_a_fractional_float_tensor_step_is_refused():
    torch = pytest.importorskip("torch")
    with pytest.raises(CanvasTypeError, match=r"ClockContext last_fired must be an integer step .*got Tensor tensor\(2\.5"):
        ClockContext(last_fired=torch.tensor(2.5))
    with pytest.raises(CanvasTypeError, match=r"ClockContext external_t must be an integer step"):
        ClockContext(external_t=torch.tensor([4, 5]))
