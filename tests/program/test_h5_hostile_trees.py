"""Object trees that are hostile to the walk: absurd nesting and attribute names that are not
strings (refused with a ProgramError naming the object), lists of lists of Fields (left off the
canvas, as canvas-engineering leaves them, with a warning naming them)."""

from __future__ import annotations

from typing import Any

import pytest

from canvas_core import Field, compile_program, compile_schema
from canvas_core.errors import CanvasTypeError, ProgramError


class Node:
    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


def _chain(depth: int, in_list: bool = False) -> Node:
    node = Node(f=Field(1, 1))
    for _ in range(depth):
        node = Node(child=[node] if in_list else node)
    return node


@pytest.mark.parametrize("in_list", [False, True], ids=["objects", "lists"])
def test_absurd_nesting_is_a_program_error(in_list):
    with pytest.raises(ProgramError, match=r"Node: the object tree is nested too deeply to compile"):
        compile_schema(_chain(3000, in_list), T=1)


def test_absurd_nesting_is_a_program_error_for_programs_too():
    with pytest.raises(ProgramError, match="nested too deeply"):
        compile_program(_chain(3000), T=1)


def test_moderate_nesting_still_compiles():
    regions = list(compile_schema(_chain(40), T=1).layout.regions)
    assert len(regions) == 41 and regions[-1] == "child." * 40 + "f"


def test_a_list_of_lists_of_fields_is_left_off_with_a_warning_naming_the_path():
    with pytest.warns(UserWarning, match=r"Node: grid\[1\] is a list inside the list 'grid' and holds Fields"):
        schema = compile_schema(Node(cam=Field(1, 1), grid=[[], [Field(1, 1), Field(1, 1)]]), T=1)
    assert list(schema.layout.regions) == ["cam"]


def test_lists_of_lists_without_fields_are_ignored():
    schema = compile_schema(Node(cam=Field(1, 1), table=[[1, 2], [3, 4]], empty=[[]]), T=1)
    assert list(schema.layout.regions) == ["cam"]


def test_a_non_string_attribute_name_is_refused_by_name():
    obj = Node(cam=Field(1, 1))
    obj.__dict__[5] = Field(1, 1)
    with pytest.raises(ProgramError, match=r"Node: attribute name 5 is of type int, not a string"):
        compile_schema(obj, T=1)


def test_an_unhashable_path_given_to_a_bound_schema_is_named():
    bound = compile_schema(Node(cam=Field(1, 1)), T=1)
    with pytest.raises(CanvasTypeError, match=r"indexed by a field path such as 'camera'.*got list \['cam'\]"):
        bound[["cam"]]
    assert bound["cam"].name == "cam" and "cam" in bound and 3 not in bound
