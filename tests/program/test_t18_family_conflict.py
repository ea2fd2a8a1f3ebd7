"""A region whose layout RegionSpec and program RegionProgram name different families warns
(the program's family is the one the model uses; the layout's summary shows the spec's)."""

import warnings

import pytest

import canvas_core as cc
from canvas_core.program import RegionProgram
from canvas_core.program.canvas_program import CanvasProgram


def _schema(family):
    lay = cc.CanvasLayout(T=2, H=2, W=2, d_model=8, regions={
        "m": cc.RegionSpec(bounds=(0, 2, 0, 1, 0, 2), family=family), "a": (0, 2, 1, 2, 0, 2)})
    return cc.CanvasSchema(lay, cc.CanvasTopology(connections=[cc.Connection("m", "a")]))


def test_conflicting_families_warn_naming_both():
    with pytest.warns(UserWarning, match=r"region 'm': RegionSpec family='memory' and RegionProgram family='action'"):
        prog = CanvasProgram(schema=_schema("memory"), regions={"m": RegionProgram(family="action")})
    assert prog.regions["m"].family == "action"  # accepted, as before


@pytest.mark.parametrize("spec_family", [None, "memory"])
def test_agreeing_or_unset_family_is_quiet(spec_family):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CanvasProgram(schema=_schema(spec_family), regions={"m": RegionProgram(family="memory")})
