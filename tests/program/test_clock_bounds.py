"""Clocks refuse what cannot work: unbounded inner steps, summaries that are not finite numbers,
and an ``OnEvent`` band that no value lies in (regressions of a hostile sweep)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from canvas_core import ClockContext, ClockExpr, OnEvent, Or, clock_on
from canvas_core.errors import CanvasTypeError, ProgramError, SchemaError, SchemaFormatError, SizeLimitError
from canvas_core.program import CanvasProgram, ClockSpec, Field, compile_program


def test_max_inner_steps_is_bounded_by_the_loop_limit(monkeypatch):
    with pytest.raises(SizeLimitError, match=r"max_inner_steps \(domain='internal'\) = 1,000,000,000 .*CANVAS_MAX_LOOPS"):
        ClockSpec(domain="internal", max_inner_steps=10**9)
    with pytest.raises(SizeLimitError, match="CANVAS_MAX_LOOPS"):  # kept on other domains, so bounded there too
        ClockSpec(max_inner_steps=10**7)
    assert ClockSpec(domain="internal", max_inner_steps=1024).max_inner_steps == 1024
    monkeypatch.setenv("CANVAS_MAX_LOOPS", "4")
    with pytest.raises(SizeLimitError, match="limit 4 "):
        ClockSpec(domain="internal", max_inner_steps=5)


def test_program_file_with_huge_max_inner_steps_is_refused():
    @dataclasses.dataclass
    class P:
        a: Field = dataclasses.field(default_factory=lambda: Field(1, 1, clock=ClockSpec(domain="internal",
                                                                                          max_inner_steps=3)))

    d = compile_program(P())[1].to_dict()
    d["region_programs"]["a"]["clock"]["max_inner_steps"] = 10**9
    with pytest.raises(SchemaFormatError, match=r"region_programs\.a\.clock: .*CANVAS_MAX_LOOPS"):
        CanvasProgram.from_json(json.dumps(d))


@pytest.mark.parametrize("kw", [dict(gt=0.9, lt=0.1), dict(gt=0.5, lt=0.5), dict(gt=math.inf), dict(lt=-math.inf)])
def test_on_event_that_can_never_fire_is_refused(kw):
    with pytest.raises(SchemaError, match="can never fire") as info:
        OnEvent("err.prediction", **kw)
    assert "Or(OnEvent('err.prediction'" in str(info.value)
    with pytest.raises(SchemaError, match="can never fire"):
        clock_on("err.prediction", **kw)
    with pytest.raises(SchemaFormatError, match="can never fire"):
        ClockExpr.from_dict({"type": "on_event", "source": "err.prediction", **kw})


def test_on_event_band_and_outside_band_still_work():
    band = OnEvent("err.prediction", gt=0.1, lt=0.9)
    outside = Or(OnEvent("err.prediction", gt=0.9), OnEvent("err.prediction", lt=0.1))
    for value, inside in ((0.5, True), (0.95, False), (0.05, False)):
        ctx = ClockContext(summaries={"err": {"prediction": value}})
        assert band.evaluate(ctx) is inside and outside.evaluate(ctx) is not inside


def test_on_event_threshold_beyond_float_range_is_a_schema_error():
    with pytest.raises(SchemaError, match="beyond the range of a float"):
        OnEvent("err.prediction", gt=10**400)


@pytest.mark.parametrize("value, error, words", [
    ("0.9", CanvasTypeError, "must be a number"),
    (True, CanvasTypeError, "must be a number"),
    ([0.9], CanvasTypeError, "must be a number"),
    (float("nan"), ProgramError, "is nan"),
    (float("inf"), ProgramError, "is inf"),
    (10**400, ProgramError, "beyond the range of a float"),
], ids=["str", "bool", "list", "nan", "inf", "huge-int"])
def test_on_event_expression_refuses_bad_summaries(value, error, words):
    with pytest.raises(error, match=r"summaries\['err'\]\['prediction'\]") as info:
        OnEvent("err.prediction", gt=0.5).evaluate(ClockContext(summaries={"err": {"prediction": value}}))
    assert words in str(info.value)


def test_on_event_expression_refuses_a_summary_that_is_not_a_mapping():
    with pytest.raises(CanvasTypeError, match=r"summaries\['err'\] must be a mapping"):
        OnEvent("err.prediction", gt=0.5).evaluate(ClockContext(summaries={"err": 0.9}))
