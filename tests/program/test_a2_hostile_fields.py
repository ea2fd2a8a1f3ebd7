"""Odd program inputs: Fields kept in a dict, set or deque are warned about (they were left off the
canvas without a word); a numpy float32 loss weight is a number, as for RegionSpec; an integer
loss weight past the largest float is a ProgramError, not a bare OverflowError."""

from __future__ import annotations

import collections
import dataclasses
import warnings

import numpy as np
import pytest

from canvas_core import Field, compile_schema
from canvas_core.errors import ProgramError


class Robot:
    def __init__(self, **extra) -> None:
        self.base = Field(1, 1)
        for k, v in extra.items():
            setattr(self, k, v)


@pytest.mark.parametrize("make", [dict, set, frozenset, collections.deque], ids=lambda m: m.__name__)
def test_fields_in_a_container_the_walk_skips_are_warned_about(make):
    f = Field(1, 1)
    cams = make({"left": f}) if make is dict else make([f])
    with pytest.warns(UserWarning, match=f"Robot: cams is a {make.__name__} holding Fields; .* left off the canvas"):
        names = compile_schema(Robot(cams=cams), T=1).layout.region_names
    assert names == ("base",)


def test_a_dataclass_dict_field_is_warned_about_too():
    @dataclasses.dataclass
    class Arm:
        joint: Field = dataclasses.field(default_factory=lambda: Field(1, 1))
        extra: dict = dataclasses.field(default_factory=lambda: {"tip": Field(1, 1)})

    with pytest.warns(UserWarning, match="Arm: extra is a dict holding Fields"):
        compile_schema(Arm(), T=1)


def test_a_dict_that_only_names_fields_of_the_tree_is_no_warning():
    robot = Robot(cam=Field(2, 2))
    robot.by_name = {"cam": robot.cam, "base": robot.base}
    robot.tags = {"a", "b"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compile_schema(robot, T=1).layout.region_names == ("base", "cam")


def test_loss_weights_of_numpy_and_huge_integers():
    assert Field(1, 1, loss_weight=np.float32(0.5)).loss_weight == 0.5
    assert type(Field(1, 1, loss_weight=np.float32(0.5)).loss_weight) is float
    with pytest.raises(ProgramError, match=r"Field\(h=1, w=1\): loss_weight must be finite, got an integer past"):
        Field(1, 1, loss_weight=10**400)
