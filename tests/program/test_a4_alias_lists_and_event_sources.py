"""A plain object's list of aliases of its Fields adds no region (canvas-engineering adds none);
an ``on_event`` clock naming no region of the schema is warned about when the program is built."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, List

import pytest

import canvas_core as cc
from canvas_core import CanvasLayout, CanvasProgram, CanvasSchema, CanvasTopology, Field, compile_program
from canvas_core.program.specs import ClockSpec, RegionProgram

SMALL = Field(1, 1)


def _regions(root: Any) -> List[str]:
    return list(cc.compile_schema(root, T=2, H=8, W=8, d_model=8).layout.regions)


def _alias_list(F: Any) -> Any:
    class Robot:
        def __init__(self) -> None:
            self.a, self.b = F(2, 2), F(1, 1)
            self.all = [self.a, self.b]  # for iterating: no new regions
            self.x = self.a  # one attribute aliasing a Field: a region, as in canvas-engineering
    return Robot()


def test_an_alias_list_adds_no_region_as_in_canvas_engineering():
    ce = pytest.importorskip("canvas_engineering")
    theirs = list(ce.compile_schema(_alias_list(ce.Field), T=2, H=8, W=8, d_model=8).layout.regions)
    assert _regions(_alias_list(Field)) == theirs == ["a", "b", "x"]


def test_a_list_mixing_aliases_and_its_own_fields_keeps_every_element():
    class Arm:
        def __init__(self) -> None:
            self.grip = Field(1, 2)

    class Robot:
        def __init__(self) -> None:
            self.arm = Arm()
            self.mix = [self.arm.grip, Field(1, 1)]

    # dropping only the alias would renumber the list (mix[1] alone) and leave mix[0] unnavigable
    assert _regions(Robot()) == ["mix[0]", "mix[1]", "arm", "arm.grip"]


def test_a_list_of_aliases_of_nested_fields_adds_no_region():
    class Arm:
        def __init__(self) -> None:
            self.grip, self.wrist = Field(1, 2), Field(1, 1)

    class Robot:
        def __init__(self) -> None:
            self.arm = Arm()
            self.parts = [self.arm.grip, self.arm.wrist]
            self.cams = [Field(2, 2), Field(2, 2)]
            self.main = self.cams[0]  # an attribute aliasing a list element: the list keeps it

    assert _regions(Robot()) == ["cams[0]", "cams[1]", "main", "arm", "arm.grip", "arm.wrist"]


def test_a_template_used_several_times_is_no_alias():
    class Hand:
        def __init__(self) -> None:
            self.palm = SMALL
            self.fingers = [SMALL] * 3  # one frozen Field as a template: three regions
            self.thumb = [SMALL]  # held once, and also the palm's Field: an alias

    assert _regions(Hand()) == ["palm", "fingers[0]", "fingers[1]", "fingers[2]"]


def test_a_dataclass_field_holding_aliases_is_a_declaration():
    @dataclass
    class Robot:
        a: Field = field(default_factory=lambda: Field(2, 2))
        all: list = field(init=False)

        def __post_init__(self) -> None:
            self.all = [self.a]

    assert _regions(Robot()) == ["a", "all[0]"]


def test_an_event_source_naming_no_region_warns_at_compile():
    @dataclass
    class R:
        error: Field = Field(1, 1)
        plan: Field = Field(1, 1, clock=ClockSpec(mode="on_event", event_source="eror.prediction"))

    with pytest.warns(UserWarning, match=r"region 'plan': .*'eror.prediction'.*'eror' is no region of the "
                                         r"schema. Did you mean 'error'\? Regions: \['error', 'plan'\]"):
        compile_program(R(), T=2, d_model=8)


def test_event_sources_of_known_regions_and_boundary_names_do_not_warn():
    layout = CanvasLayout(T=2, spatial_shape=(3,), d_model=8,
                          regions={"arm.grip": (0, 2, 0, 1), "plan": (0, 2, 1, 2), "b": (0, 2, 2, 3)})
    schema = CanvasSchema(layout=layout, topology=CanvasTopology(connections=[]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CanvasProgram(schema=schema, regions={
            "plan": RegionProgram(clock=ClockSpec(mode="on_event", event_source="arm.grip.prediction")),
            "b": RegionProgram(clock=ClockSpec(mode="boundary", event_source="episode_end"))})
    with pytest.warns(UserWarning, match="'arm.gripp' is no region"):
        CanvasProgram.from_dict(CanvasProgram(schema=schema, regions={"plan": RegionProgram(
            clock=ClockSpec(mode="on_event", event_source="arm.gripp.prediction"))}).to_dict())
