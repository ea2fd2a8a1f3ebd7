"""RegionScheduler refuses summaries that are not finite numbers and inner-step counts over the
loop limit, naming the summary key / the region (regressions of a hostile sweep)."""

import dataclasses
import types

import pytest

torch = pytest.importorskip("torch")
from canvas_core.errors import CanvasTypeError, ProgramError, SizeLimitError  # noqa: E402
from canvas_core.program import ClockSpec, Field, compile_program  # noqa: E402
from canvas_core.runtime.scheduling import RegionScheduler  # noqa: E402


@dataclasses.dataclass
class _Prog:
    err: Field = dataclasses.field(default_factory=lambda: Field(1, 1))
    plan: Field = dataclasses.field(default_factory=lambda: Field(1, 1, clock=ClockSpec(
        mode="on_event", event_source="err.prediction", event_threshold=0.5)))


def _scheduler() -> RegionScheduler:
    return RegionScheduler(compile_program(_Prog())[1])


@pytest.mark.parametrize("value, error, words", [
    ("0.9", CanvasTypeError, "must be a number"),
    (True, CanvasTypeError, "must be a number"),
    (torch.tensor([0.9, 0.1]), CanvasTypeError, "must be a number"),
    (float("nan"), ProgramError, "is nan"),
    (float("inf"), ProgramError, "is inf"),
    (10**400, ProgramError, "beyond the range of a float"),
], ids=["str", "bool", "tensor", "nan", "inf", "huge-int"])
def test_step_refuses_a_summary_that_is_no_finite_number(value, error, words):
    with pytest.raises(error, match=r"summaries\['err'\]\['prediction'\]") as info:
        _scheduler().step(0, summaries={"err": {"prediction": value}})
    assert words in str(info.value)


@pytest.mark.parametrize("value, fires", [(0.9, True), (0.1, False), (1, True), (torch.tensor(0.9), True)])
def test_step_accepts_numbers_and_one_element_tensors(value, fires):
    assert ("plan" in _scheduler().step(0, summaries={"err": {"prediction": value}})) is fires


def test_step_plan_bounds_a_duck_typed_inner_clock(monkeypatch):
    # ClockSpec refuses max_inner_steps over CANVAS_MAX_LOOPS; a clock given through clocks= is
    # checked again before one set per inner step is built
    monkeypatch.setenv("CANVAS_MAX_LOOPS", "4")
    clock = types.SimpleNamespace(mode="periodic", period=1, cooldown=0, max_silence=None,
                                  domain="internal", max_inner_steps=5)
    s = RegionScheduler(compile_program(_Prog())[1], clocks={"err": clock})
    with pytest.raises(SizeLimitError, match="region 'err'.*= 5 exceeds the limit 4 .*CANVAS_MAX_LOOPS"):
        s.step_plan(0)


def test_step_plan_at_the_limit():
    @dataclasses.dataclass
    class P:
        a: Field = dataclasses.field(default_factory=lambda: Field(1, 1, clock=ClockSpec(
            domain="internal", max_inner_steps=1024)))

    plan = RegionScheduler(compile_program(P())[1]).step_plan(0)
    assert len(plan) == 1025 and all(s == {"a"} for s in plan)
