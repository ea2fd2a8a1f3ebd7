"""The scan of dicts / sets / deques for Fields is capped in total (nested lists of objects inside
a dict are looked at no further than the cap, however deep), and Fields in subclasses of those
builtins (OrderedDict, defaultdict, a set subclass) are warned about again, read through the
builtin's own methods so no overriding method runs."""

from __future__ import annotations

import collections
import warnings

import pytest

import canvas_core.program._tree as tree
from canvas_core import Field, compile_schema
from tests.program.test_fx2_container_scan import Item, Robot


def _entered(monkeypatch, robot) -> int:
    calls = []
    real = tree._declared
    monkeypatch.setattr(tree, "_declared", lambda obj, classes=None: calls.append(1) or real(obj, classes))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compile_schema(robot, T=1).layout.region_names == ("cam",)
    return len(calls)


def test_a_nested_list_in_a_dict_is_scanned_no_further_than_the_cap(monkeypatch):
    items = [Item() for _ in range(3 * tree._SCAN_CAP)]
    assert _entered(monkeypatch, Robot(buf={"obs": items})) <= tree._SCAN_CAP


def test_the_cap_is_shared_by_all_containers_of_the_tree(monkeypatch):
    n = tree._SCAN_CAP // 2 + 100
    robot = Robot(a={"obs": [Item() for _ in range(n)]}, b={"obs": [Item() for _ in range(n)]},
                  c=collections.deque([[Item() for _ in range(n)]]))
    assert _entered(monkeypatch, robot) <= tree._SCAN_CAP


class Loud(dict):
    def values(self):  # never called by the scan
        raise AssertionError("user code ran")

    def __iter__(self):
        raise AssertionError("user code ran")


class LoudSet(set):
    def __iter__(self):
        raise AssertionError("user code ran")


@pytest.mark.parametrize("make", [lambda f: collections.OrderedDict(k=f), lambda f: collections.defaultdict(list, k=f),
                                  lambda f: Loud(k=f), lambda f: LoudSet([f]), lambda f: frozenset([f])],
                         ids=["OrderedDict", "defaultdict", "dict-subclass", "set-subclass", "frozenset"])
def test_fields_in_builtin_subclasses_are_warned_about(make):
    with pytest.warns(UserWarning, match="holding Fields"):
        layout = compile_schema(Robot(store=make(Field(2, 2))), T=1).layout
    assert layout.region_names == ("cam",)  # still off the canvas, as in canvas-engineering
