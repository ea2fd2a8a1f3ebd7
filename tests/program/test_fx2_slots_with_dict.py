"""An object with a ``__dict__`` whose class inherits ``__slots__`` keeps canvas-engineering's
layout: its slot Fields are left off (canvas-engineering reads ``__dict__`` only), with a
``UserWarning`` naming the slot; an object without a ``__dict__`` has its slots walked."""

from __future__ import annotations

import pytest

from canvas_core import Field, compile_schema


class Base:
    __slots__ = ("cam",)


class Robot(Base):  # no __slots__ of its own: instances have a __dict__ too
    def __init__(self) -> None:
        self.cam = Field(2, 2)  # stored in the inherited slot
        self.arm = Field(1, 1)  # stored in the __dict__


class Slotted(Base):
    __slots__ = ("arm",)

    def __init__(self) -> None:
        self.cam = Field(2, 2)
        self.arm = Field(1, 1)


def test_slot_fields_of_an_object_with_a_dict_are_left_off_with_a_warning():
    with pytest.warns(UserWarning, match=r"Robot\.cam is a __slots__ attribute holding Fields.*left off the canvas"):
        layout = compile_schema(Robot(), T=2).layout
    assert layout.region_names == ("arm",)


def test_an_object_without_a_dict_has_its_slots_walked():
    assert compile_schema(Slotted(), T=2).layout.region_names == ("cam", "arm")
