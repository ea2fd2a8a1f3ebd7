"""Fields held in ``__slots__`` (a plain object has no ``__dict__`` then) are regions, as the same
Fields in instance attributes are; before, the walk read ``__dict__`` only and dropped them."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from canvas_core import Field, compile_program, compile_schema
from canvas_core.errors import ProgramError


class Arm:
    __slots__ = ("joint", "grip", "_scratch", "unset")

    def __init__(self) -> None:
        self.joint = Field(2, 2)
        self.grip = Field(1, 1)
        self._scratch = Field(1, 1)  # private: not a region


class LongArm(Arm):
    __slots__ = "reach"  # a single string is one slot

    def __init__(self) -> None:
        super().__init__()
        self.reach = Field(1, 2)


class Robot:
    __slots__ = ("arms", "eye", "__weakref__")

    def __init__(self) -> None:
        self.eye = Field(1, 1)
        self.arms = [Arm(), LongArm()]


@dataclasses.dataclass(slots=True)
class Slotted:
    a: Field = dataclasses.field(default_factory=lambda: Field(1, 1))
    robot: Robot = dataclasses.field(default_factory=Robot)


def test_slotted_objects_are_walked_in_declaration_order():
    names = compile_schema(Robot(), T=2).layout.region_names
    assert names == ("eye", "arms[0]", "arms[0].joint", "arms[0].grip",
                     "arms[1]", "arms[1].joint", "arms[1].grip", "arms[1].reach")


def test_a_slotted_root_and_a_slots_dataclass_holding_one():
    class Only:
        __slots__ = ("x",)

        def __init__(self) -> None:
            self.x = Field(1, 1)

    assert compile_schema(Only(), T=1).layout.region_names == ("x",)
    bound, program = compile_program(Slotted(), T=2)
    assert bound.layout.region_names[:3] == ("a", "robot", "robot.eye")
    assert "robot.arms[1].reach" in program.regions


def test_a_slot_holding_a_cycle_is_refused_by_name():
    class Node:
        __slots__ = ("f", "back")

    a, b = Node(), Node()
    a.f, b.f, a.back, b.back = Field(1, 1), Field(1, 1), b, a
    with pytest.raises(ProgramError, match="refers back to itself at 'back.back'"):
        compile_schema(a, T=1)


def test_a_property_named_like_a_slot_is_not_called():
    class Base:
        __slots__ = ("cam",)

    class Sub(Base):
        __slots__ = ()  # no __dict__: the slots are walked

        @property
        def cam(self):  # shadows the slot: reading it would run user code
            raise AssertionError("the property was called")

    s = Sub()
    Base.cam.__set__(s, Field(1, 1))
    assert compile_schema(s, T=1).layout.region_names == ("cam",)


def test_a_program_of_slotted_objects_pickles():
    _, program = compile_program(Robot(), T=2)
    assert pickle.loads(pickle.dumps(program)) == program
