"""Attributes a dataclass holds outside its fields that add nothing (aliases of its own Fields,
private scratch Fields, cached properties) compile silently, as in canvas-engineering; a truly new
public Field is left off with a warning, never refused; helper objects of any length are not
"nesting"."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass
from typing import Any, List

import pytest

from canvas_core import Field, compile_program, compile_schema


def _quiet_names(obj: Any) -> List[str]:
    """The region names, failing on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return list(compile_schema(obj, T=2).layout.regions)


def _ce_names(make: Any) -> List[str]:
    ce = pytest.importorskip("canvas_engineering")
    return list(ce.compile_schema(make(ce.Field), T=2, H=8, W=8, d_model=16).layout.regions)


def _alias_into_list(F: Any) -> Any:
    @dataclass
    class Robot:
        cams: List[F] = dataclasses.field(default_factory=lambda: [F(2, 2), F(2, 2)])
        hand: F = dataclasses.field(default_factory=lambda: F(1, 1))

        def __post_init__(self) -> None:
            self.main = self.cams[0]

    return Robot()


def _alias_nested(F: Any) -> Any:
    @dataclass
    class Arm:
        grip: F = dataclasses.field(default_factory=lambda: F(1, 1))

    @dataclass
    class Robot:
        arm: Arm = dataclasses.field(default_factory=Arm)

        def __post_init__(self) -> None:
            self.grip = self.arm.grip
            self.both = [self.arm.grip, self.arm]  # a list of aliases adds nothing either

    return Robot()


def _alias_list_element(F: Any) -> Any:
    @dataclass
    class Cam:
        rgb: F = dataclasses.field(default_factory=lambda: F(2, 2))

    @dataclass
    class Robot:
        cams: List[Cam] = dataclasses.field(default_factory=lambda: [Cam(), Cam()])

        def __post_init__(self) -> None:
            self.main = self.cams[0]

    return Robot()


def _private(F: Any) -> Any:
    @dataclass
    class Robot:
        cam: F = dataclasses.field(default_factory=lambda: F(2, 2))

        def __post_init__(self) -> None:
            self._scratch = F(1, 1)

    return Robot()


def _cached(F: Any) -> Any:
    @dataclass
    class Robot:
        a: F = dataclasses.field(default_factory=lambda: F(2, 2))
        b: F = dataclasses.field(default_factory=lambda: F(2, 2))

        @functools.cached_property
        def all_fields(self) -> list:
            return [self.a, self.b, F(1, 1)]  # even a new Field here: a cache, not a part

    r = Robot()
    r.all_fields
    return r


@pytest.mark.parametrize("make, expected", [
    (_alias_into_list, ["cams[0]", "cams[1]", "hand"]),  # canvas-engineering drops lists of bare Fields
    (_alias_nested, ["arm", "arm.grip"]),
    (_alias_list_element, ["cams[0]", "cams[0].rgb", "cams[1]", "cams[1].rgb"]),
    (_private, ["cam"]),
    (_cached, ["a", "b"]),
], ids=["alias-into-list", "alias-nested", "alias-list-element", "private", "cached_property"])
def test_attributes_that_add_nothing_compile_silently_as_in_canvas_engineering(make, expected):
    assert _quiet_names(make(Field)) == expected
    theirs = _ce_names(make)
    assert theirs == (["hand"] if make is _alias_into_list else expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(compile_program(make(Field), T=2)[1].regions) == expected


def test_a_new_public_field_outside_the_fields_warns_and_compiles_like_canvas_engineering():
    def make(F: Any) -> Any:
        @dataclass
        class Robot:
            cam: F = dataclasses.field(default_factory=lambda: F(2, 2))

            def __post_init__(self) -> None:
                self.main = self.cam  # an alias: not named in the warning
                self.extra = F(1, 1)

        return Robot()

    with pytest.warns(UserWarning) as record:
        names = list(compile_schema(make(Field), T=2).layout.regions)
    assert names == _ce_names(make) == ["cam"]
    messages = [str(w.message) for w in record]
    assert any("Robot.extra is a Field" in m and "extra: Field = dataclasses.field(init=False)" in m
               for m in messages)
    assert not any("Robot.main" in m for m in messages)


def test_an_object_mixing_aliases_and_a_new_field_warns():
    @dataclass
    class Robot:
        cam: Field = dataclasses.field(default_factory=lambda: Field(2, 2))

        def __post_init__(self) -> None:
            self.view = [self.cam, Field(1, 1)]

    with pytest.warns(UserWarning, match=r"Robot\.view is a list holding Fields"):
        assert list(compile_schema(Robot(), T=2).layout.regions) == ["cam"]


class _Node:
    def __init__(self, nxt: Any) -> None:
        self.nxt, self.val = nxt, 1


def _chain(n: int) -> _Node:
    head = None
    for _ in range(n):
        head = _Node(head)
    return head


def test_a_long_linked_list_without_fields_on_a_dataclass_instance_is_no_deep_nesting():
    def make(F: Any) -> Any:
        @dataclass
        class R:
            a: F = dataclasses.field(default_factory=lambda: F(2, 2))

            def __post_init__(self) -> None:
                self.history = _chain(5000)

        return R()

    assert _quiet_names(make(Field)) == _ce_names(make) == ["a"]


def test_a_long_linked_list_without_fields_on_a_plain_object_is_ignored():
    class Plain:
        def __init__(self) -> None:
            self.cam = Field(2, 2)
            self.history = _chain(5000)

    assert _quiet_names(Plain()) == ["cam"]


def test_a_list_inside_a_helper_holding_itself_does_not_hang():
    loop: list = []
    loop.append(loop)

    @dataclass
    class R:
        a: Field = dataclasses.field(default_factory=lambda: Field(2, 2))

        def __post_init__(self) -> None:
            self.loop = loop

    assert _quiet_names(R()) == ["a"]
