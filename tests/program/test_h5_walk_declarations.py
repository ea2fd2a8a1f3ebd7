"""Which attributes of a canvas type become regions: ClassVar-annotated Fields (regions, as in
canvas-engineering) and Fields a dataclass holds outside its fields (left off the canvas, as there,
with a warning naming them)."""

from __future__ import annotations

import dataclasses
from dataclasses import InitVar, dataclass
from typing import ClassVar, List, Optional

import pytest

from canvas_core import Field, compile_program, compile_schema


def _names(obj) -> List[str]:
    return list(compile_schema(obj, T=2).layout.regions)


def test_a_classvar_field_of_a_dataclass_is_a_region_in_declaration_order():
    @dataclass
    class Robot:
        camera: Field = Field(4, 4)
        template: ClassVar[Field] = Field(2, 2)
        arm: Field = Field(1, 2)
        count: ClassVar[int] = 3  # not a Field: ignored

    assert _names(Robot()) == ["camera", "template", "arm"]
    assert compile_schema(Robot(), T=2).layout.region_numel("template") == 2 * 4
    assert "template" in compile_program(Robot(), T=2)[1].regions


def test_the_classvar_rule_matches_canvas_engineering():
    ce = pytest.importorskip("canvas_engineering")

    def make(F):
        @dataclass
        class Robot:
            camera: F = F(4, 4)
            template: ClassVar[F] = F(2, 2)
            arm: F = F(1, 2)
            seed: InitVar[F] = F(1, 1)

            def __post_init__(self, seed) -> None:
                pass

        return Robot()

    theirs = ce.compile_schema(make(ce.Field), T=2, H=8, W=8, d_model=16)
    assert _names(make(Field)) == list(theirs.layout.regions)


def test_a_classvar_field_of_a_plain_class_is_a_region_too():
    class Robot:
        template: ClassVar[Field] = Field(2, 2)

        def __init__(self) -> None:
            self.camera = Field(4, 4)

    assert _names(Robot()) == ["camera", "template"]


def test_a_field_set_in_post_init_is_left_off_with_a_warning_naming_it():
    @dataclass
    class Robot:
        camera: Field = Field(4, 4)

        def __post_init__(self) -> None:
            self.extra = Field(1, 1)

    with pytest.warns(UserWarning, match=r"Robot\.extra is a Field set on the instance.*field\(init=False\)"):
        assert _names(Robot()) == ["camera"]


def test_a_list_of_fields_set_later_is_left_off_with_a_warning_too():
    @dataclass
    class Robot:
        camera: Field = Field(4, 4)

    r = Robot()
    r.fingers = [Field(1, 1), Field(1, 1)]
    with pytest.warns(UserWarning, match=r"Robot\.fingers is a list holding Fields"):
        assert _names(r) == ["camera"]


def test_the_suggested_init_false_field_is_a_region():
    @dataclass
    class Robot:
        camera: Field = Field(4, 4)
        extra: Field = dataclasses.field(init=False)

        def __post_init__(self) -> None:
            self.extra = Field(1, 1)

    assert _names(Robot()) == ["camera", "extra"]


def test_objects_without_fields_outside_the_dataclass_fields_are_fine():
    @dataclass
    class Config:
        lr: float = 0.1

    @dataclass
    class Robot:
        camera: Field = Field(4, 4)
        defaults = Config()  # unannotated, but holds no Field

        def __post_init__(self) -> None:
            self.config = Config()
            self.sizes = [1, 2]

    assert _names(Robot()) == ["camera"]


def test_a_classvar_field_of_a_non_dataclass_base_is_left_off_with_a_warning():
    class Base:
        template: ClassVar[Field] = Field(2, 2)

    @dataclass
    class Robot(Base):
        camera: Field = Field(4, 4)

    with pytest.warns(UserWarning, match=r"Robot\.template .*ClassVar in a base class that is not a dataclass"):
        assert _names(Robot()) == ["camera"]


def test_a_default_instance_kept_in_a_classvar_is_not_a_part():
    @dataclass
    class Robot:
        camera: Field = Field(1, 1)
        default: ClassVar[Optional["Robot"]] = None

    Robot.default = Robot()
    assert _names(Robot()) == ["camera"]


def test_a_classvar_field_of_a_pydantic_model_is_left_off_with_a_warning():
    pydantic = pytest.importorskip("pydantic")

    class Robot(pydantic.BaseModel):
        camera: Field = Field(4, 4)
        template: ClassVar[Field] = Field(2, 2)
        count: ClassVar[int] = 3

    with pytest.warns(UserWarning, match=r"Robot\.template holds Fields but is annotated ClassVar on a pydantic"):
        assert _names(Robot()) == ["camera"]

    class Plain(pydantic.BaseModel):
        camera: Field = Field(4, 4)
        count: ClassVar[int] = 3

    assert _names(Plain()) == ["camera"]


def test_back_references_and_aliases_set_in_post_init_are_fine():
    @dataclass
    class Child:
        pos: Field = Field(1, 1)

    @dataclass
    class Root:
        camera: Field = Field(2, 2)
        kid: Child = dataclasses.field(default_factory=Child)

        def __post_init__(self) -> None:
            self.kid.parent = self  # a link back up the tree: the walk reaches it anyway
            self.main = self.camera  # the same Field under a second name
            self.me = self

    assert _names(Root()) == ["camera", "kid", "kid.pos"]
