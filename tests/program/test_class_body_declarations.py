"""Fields declared in a class body: plain classes walk them like instance attributes, and a
dataclass leaves a field-holding attribute that lacks an annotation off the canvas, as
canvas-engineering does, but with a warning naming it (not silently)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, List

import pytest
import torch

from canvas_core import Field, compile_program, compile_schema
from canvas_core.errors import ProgramError

torch.set_num_threads(1)


class Arm:
    def __init__(self):
        self.joints = Field(1, 4)
        self.grip = Field(1, 1, period=2)


class InClassBody:
    camera = Field(4, 4)
    fingers = [Field(1, 1), Field(1, 2)]
    arm = Arm()
    tags = ("left", "right")  # no fields: ignored


class InInit:
    def __init__(self):
        self.camera = Field(4, 4)
        self.fingers = [Field(1, 1), Field(1, 2)]
        self.arm = Arm()
        self.tags = ("left", "right")


def _regions(bound):
    return {n: repr(spec) for n, spec in bound.layout.regions.items()}


def test_class_body_lists_and_objects_compile_like_instance_attributes():
    body, init = compile_schema(InClassBody(), T=2), compile_schema(InInit(), T=2)
    assert body.field_names == init.field_names == [
        "camera", "fingers[0]", "fingers[1]", "arm", "arm.joints", "arm.grip"]
    assert _regions(body) == _regions(init)
    _, program = compile_program(InClassBody(), T=2)
    assert set(program.regions) == set(init.field_names)


def test_a_class_body_list_alone_is_enough():
    class OnlyList:
        xs = [Field(1, 1), Field(1, 2)]

    assert compile_schema(OnlyList(), T=2).field_names == ["xs[0]", "xs[1]"]


def test_instance_attributes_override_the_class_body_and_bases_come_first():
    class Base:
        base_list = [Field(1, 1)]
        fingers = [Field(1, 1)]

    class Child(Base):
        arm = Arm()

        def __init__(self):
            self.fingers = [Field(2, 2), Field(2, 2), Field(2, 2)]

    names = compile_schema(Child(), T=2).field_names
    assert names == ["fingers[0]", "fingers[1]", "fingers[2]", "base_list[0]", "arm", "arm.joints", "arm.grip"]


def test_methods_and_properties_of_the_class_are_not_called():
    class WithBehaviour:
        camera = Field(2, 2)

        @property
        def broken(self):
            raise AssertionError("a property was evaluated while walking the declaration")

        @staticmethod
        def helper():
            return [Field(1, 1)]

        def method(self):
            return Field(1, 1)

    assert compile_schema(WithBehaviour(), T=2).field_names == ["camera"]


def test_a_class_body_list_mixing_fields_and_other_values_is_refused():
    class Mixed:
        camera = Field(2, 2)
        xs = [Field(1, 1), "oops"]

    with pytest.raises(ProgramError, match=r"xs\[1\]"):
        compile_schema(Mixed(), T=2)


@pytest.mark.parametrize("attr, value, kind", [
    ("belief", Field(2, 2), "a Field"),
    ("xs", [Field(1, 1)], "a list holding Fields"),
    ("arm", Arm(), "an object (Arm) holding Fields"),
])
def test_a_dataclass_attribute_without_annotation_is_left_off_with_a_warning(attr, value, kind):
    """canvas-engineering leaves it off silently (it reads __dataclass_fields__ only): the same
    regions here, and a warning that names the attribute and how to annotate it."""
    Robot = dataclasses.make_dataclass("Robot", [("camera", Field, dataclasses.field(default=Field(4, 4)))],
                                       namespace={attr: value})
    for compile_ in (compile_schema, compile_program):
        with pytest.warns(UserWarning) as rec:
            compiled = compile_(Robot(), T=2)
        message = " ".join(str(w.message) for w in rec)
        assert f"Robot.{attr} is {kind}" in message and "Annotate it" in message and f"`{attr}: " in message
        if compile_ is compile_schema:
            assert compiled.field_names == ["camera"]


def test_the_probe_dataclass_warns_and_names_the_attribute():
    @dataclass
    class Robot2:
        camera: Field = Field(4, 4)
        belief = Field(2, 2)

    with pytest.warns(UserWarning, match=r"Robot2\.belief.*without a type annotation.*belief: Field"):
        assert compile_schema(Robot2(), T=2).field_names == ["camera"]


def test_a_nested_dataclass_without_annotation_warns_too():
    @dataclass
    class Inner:
        a: Field = Field(1, 1)
        b = Field(1, 1)

    @dataclass
    class Outer:
        inner: Inner = dataclasses.field(default_factory=Inner)

    with pytest.warns(UserWarning, match=r"Inner\.b"):
        names = compile_schema(Outer(), T=2).field_names
    assert "inner.a" in names and "inner.b" not in names


def test_a_classvar_field_is_a_region_and_non_field_class_values_are_accepted():
    """A ``ClassVar`` Field is one of the dataclass's fields, as canvas-engineering walks them
    (``__dataclass_fields__``); plain class values and methods are not parts."""
    @dataclass
    class Fine:
        camera: Field = Field(4, 4)
        xs: List[Field] = dataclasses.field(default_factory=lambda: [Field(1, 1)])
        template: ClassVar[Field] = Field(9, 9)
        label = "robot"
        sizes = (1, 2)

        def helper(self):
            return Field(1, 1)

    assert compile_schema(Fine(), T=2).field_names == ["camera", "xs[0]", "template"]


def test_a_default_instance_kept_on_the_class_is_not_a_part():
    class Arm:
        def __init__(self):
            self.pos = Field(2, 2)

    class Robot:
        def __init__(self):
            self.cam = Field(4, 4)
            self.arm = Arm()

    Robot.default = Robot()  # a default / singleton pattern: every instance would seem to contain itself
    schema = compile_schema(Robot(), T=2, d_model=16)
    assert list(schema.layout.regions) == ["cam", "arm", "arm.pos"]  # as without the class attribute
