"""Object trees with blank attribute names: refused by name instead of regions ending in '.'."""

from __future__ import annotations

import re

import pytest

from canvas_core import Field, compile_schema
from canvas_core.errors import ProgramError


class _Plain:
    pass


@pytest.mark.parametrize("name", ["", " ", "\t"])
def test_a_blank_attribute_name_is_refused_with_its_owner(name):
    root, arm = _Plain(), _Plain()
    setattr(arm, name, Field(1, 1))  # only setattr / __dict__ can make such a name
    arm.grip = Field(1, 1)
    root.arm = arm
    with pytest.raises(ProgramError, match=re.escape(f"_Plain: attribute name {name!r} is blank; rename it")):
        compile_schema(root, T=1, d_model=8)


def test_a_bound_schema_describes_its_layout_after_a_change():
    from dataclasses import dataclass

    from canvas_core import RegionSpec

    @dataclass
    class Robot:
        a: Field = Field(2, 2)
        b: Field = Field(1, 1)

    bound = compile_schema(Robot(), T=2, d_model=8)
    bound.layout.regions["a"] = RegionSpec((0, 1, 0, 1, 0, 1))
    assert bound["a"].spec.bounds == bound.region_specs["a"].bounds == (0, 1, 0, 1, 0, 1)
    assert bound["a"].indices() == [0] and repr(bound["a"]) == "BoundField('a', t=0-1, 1x1)"
    assert "  a -> (t=0-1, 0-1, 0-1) 1pos" in bound.summary()  # the box and its size agree


def _private_parts(F):
    class Robot:
        _template = F(2, 2)  # a class-body default kept for building, not a part

        def __init__(self) -> None:
            self._scratch = F(1, 1)
            self.cam = F(1, 2)

    return Robot()


def test_private_attributes_of_a_plain_object_are_no_regions_as_in_canvas_engineering():
    ce = pytest.importorskip("canvas_engineering")
    theirs = list(ce.compile_schema(_private_parts(ce.Field), T=1, d_model=8).layout.regions)
    assert list(compile_schema(_private_parts(Field), T=1, d_model=8).layout.regions) == theirs == ["cam"]
