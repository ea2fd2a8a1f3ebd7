"""Bad inputs refused in every layer with a did-you-mean, and errors about a region name it."""

from __future__ import annotations

import pytest

import canvas_core as cc
from canvas_core.errors import CanvasError, ProgramError, RegionError, TopologyError

B = (0, 2, 0, 1, 0, 1)


@pytest.mark.parametrize("build, error, needle", [
    (lambda: cc.Field(family="obsrvation"), ProgramError, "Did you mean 'observation'"),
    (lambda: cc.RegionProgram(family="obsrvation"), ProgramError, "Did you mean 'observation'"),
    (lambda: cc.RegionSpec(B, family="obsrvation"), RegionError, "Did you mean 'observation'"),
    (lambda: cc.Connection("a", "b", operator="obsrve"), TopologyError, "Did you mean 'observe'"),
    (lambda: cc.ConnectionProgram(operator="obsrve"), ProgramError, "Did you mean 'observe'"),
])
def test_unknown_family_or_operator_refused_with_did_you_mean(build, error, needle):
    with pytest.raises(error, match=needle):
        build()


def test_custom_family_names_still_accepted():
    assert cc.RegionSpec(B, family="goal").family == "goal"
    assert cc.Field(family="goal").family == "goal"


def test_region_errors_name_the_region_written_in_a_dict():
    with pytest.raises(RegionError, match="region 'slow': RegionSpec period must be >= 1"):
        cc.CanvasLayout(T=2, H=2, W=2, d_model=4, regions={"slow": cc.RegionSpec(B, period=0)})
    with pytest.raises(CanvasError, match="region 'slow': RegionSpec loss_weight must be >= 0"):
        cc.CanvasLayout(T=2, H=2, W=2, d_model=4, regions={
            "fast": cc.RegionSpec(B),
            "slow": cc.RegionSpec(
                (0, 2, 1, 2, 0, 1), loss_weight=-1),
        })
    with pytest.raises(RegionError, match="region 'slow'"):
        dict(slow=cc.RegionSpec(B, period=0))
    # on its own a spec has no name yet: the message says what is wrong
    with pytest.raises(RegionError) as info:
        spec = cc.RegionSpec(B, period=0)  # noqa: F841
    assert "region '" not in str(info.value) and "period must be >= 1" in str(info.value)


def test_layout_and_json_errors_name_the_region():
    with pytest.raises(RegionError, match="region 'slow'"):
        cc.CanvasLayout(T=2, H=2, W=2, d_model=4, regions={"slow": (0, 2, 0, 1)})
    d = cc.CanvasSchema(cc.CanvasLayout(T=2, H=2, W=2, d_model=4, regions={"slow": B})).to_dict()
    d["regions"]["slow"]["period"] = 0
    with pytest.raises(CanvasError, match="slow"):
        cc.CanvasSchema.from_dict(d)
