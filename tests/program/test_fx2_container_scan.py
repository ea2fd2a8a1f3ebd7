"""The scan of dicts / sets / deques for Fields (to warn that they stay off the canvas) is bounded:
tensors and arrays are not looked into, at most ``_SCAN_CAP`` objects are looked at, each class's
declarations are read once, only builtin containers (and their subclasses, through the builtin's
methods) are read (a Mapping whose ``__getitem__`` raises, e.g. a lazy store, no longer breaks
compiling)."""

from __future__ import annotations

import collections
import warnings
from collections.abc import Mapping

import numpy as np
import pytest
import torch

import canvas_core.program._attrs as attrs
from canvas_core import Field, compile_schema
from canvas_core.program._tree import _SCAN_CAP


class Robot:
    def __init__(self, **extra) -> None:
        self.cam = Field(1, 1)
        for k, v in extra.items():
            setattr(self, k, v)


class Item:
    def __init__(self) -> None:
        self.x = 1


def _compile_counting(monkeypatch, robot) -> list:
    calls = []
    real = attrs._class_declarations
    monkeypatch.setattr(attrs, "_class_declarations", lambda klass: calls.append(klass) or real(klass))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about here
        assert compile_schema(robot, T=1).layout.region_names == ("cam",)
    return calls


def test_tensors_and_arrays_in_a_deque_are_not_looked_into(monkeypatch):
    buf = collections.deque((torch.zeros(2), np.zeros(2), 1.0) for _ in range(50))
    calls = _compile_counting(monkeypatch, Robot(buf=buf))
    assert torch.Tensor not in calls and np.ndarray not in calls


def test_only_the_first_elements_are_read_and_each_class_once(monkeypatch):
    calls = _compile_counting(monkeypatch, Robot(items={i: Item() for i in range(3000)}))
    assert calls.count(Item) == 1


def test_elements_past_the_cap_are_not_read():
    objs = [Item() for _ in range(_SCAN_CAP + 5000)]
    objs[_SCAN_CAP + 1000].f = Field(1, 1)  # past the cap: not looked at, so no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compile_schema(Robot(buf=collections.deque(objs)), T=1)
    objs[10].f = Field(1, 1)
    with pytest.warns(UserWarning, match="buf is a deque holding Fields"):
        compile_schema(Robot(buf=collections.deque(objs[:50])), T=1)


class LazyStore(Mapping):
    def __getitem__(self, key):
        raise RuntimeError("not loaded")

    def __iter__(self):
        return iter(["a"])

    def __len__(self) -> int:
        return 1


def test_other_mappings_are_not_read():
    assert compile_schema(Robot(store=LazyStore()), T=1).layout.region_names == ("cam",)
