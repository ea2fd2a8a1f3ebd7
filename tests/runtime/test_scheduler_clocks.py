"""RegionScheduler accepts clock expressions (and internal-microstep ClockSpecs)."""

import dataclasses

import pytest

pytest.importorskip("torch")
from canvas_core import Cooldown, MaxSilence, Or, clock_on, clock_periodic  # noqa: E402
from canvas_core.program import ClockSpec, Field, compile_program  # noqa: E402
from canvas_core.runtime.scheduling import RegionScheduler  # noqa: E402


@dataclasses.dataclass
class _Prog:
    a: Field = dataclasses.field(default_factory=lambda: Field(1, 1))
    b: Field = dataclasses.field(default_factory=lambda: Field(1, 1))
    c: Field = dataclasses.field(default_factory=lambda: Field(1, 1, clock=ClockSpec(domain="internal", max_inner_steps=3)))


def test_scheduler_runs_clock_expressions():
    _, prog = compile_program(_Prog())
    s = RegionScheduler(prog, clocks={"a": Or(clock_periodic(3), clock_on("b.err", gt=0.5)),
                                      "b": MaxSilence(Cooldown(clock_periodic(1), steps=2), steps=10)})
    fired_a, fired_b = [], []
    for t in range(9):
        summ = {"b": {"err": 0.9 if t == 4 else 0.0}}
        active = s.step(t, summaries=summ)
        fired_a.append("a" in active)
        fired_b.append("b" in active)
    assert fired_a == [t % 3 == 0 or t == 4 for t in range(9)]
    # cooldown of 2 after each fire: fires at 0, 2, 4, 6, 8
    assert fired_b == [t % 2 == 0 for t in range(9)]


def test_internal_microsteps_from_clockspec():
    _, prog = compile_program(_Prog())
    s = RegionScheduler(prog)
    plan = s.step_plan(0)
    assert plan[0] == {"a", "b", "c"}
    assert plan[1:] == [{"c"}, {"c"}, {"c"}]  # max_inner_steps=3 extra microsteps for c only


def test_clock_expression_gets_no_microsteps():
    # the scheduler runs internal microsteps only for ClockSpec(domain="internal"); an expression
    # with an internal-domain Periodic fires on the external step only (documented gap)
    _, prog = compile_program(_Prog())
    s = RegionScheduler(prog, clocks={"c": clock_periodic(1, domain="internal")})
    assert s.step_plan(0) == [{"a", "b", "c"}]
