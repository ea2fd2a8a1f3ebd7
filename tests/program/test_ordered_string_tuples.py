"""``tags`` and ``losses`` are ordered sequences: a set or a mapping is refused, naming the argument.

Regression: ``RegionProgram(tags={...})`` and ``LearningSpec(losses={...})`` were accepted.  A set
has no defined order (the stored tuple, and so a saved program, came out in whatever order the
set's hash gave, which for strings changes per process); a dict gave its keys only.  ``Field`` had
refused both already; the program specs now raise the same CanvasTypeError.
"""

from __future__ import annotations

import pytest

from canvas_core.errors import CanvasError, CanvasTypeError
from canvas_core.program import Field, LearningSpec, RegionProgram

UNORDERED = {
    "set": lambda: {"belief", "object"},
    "frozenset": lambda: frozenset({"belief", "object"}),
    "dict": lambda: {"belief": 1, "object": 2},
}


@pytest.mark.parametrize("kind", sorted(UNORDERED))
@pytest.mark.parametrize("make, where, arg, example", [
    (lambda v: RegionProgram(tags=v), "RegionProgram", "tags", "('belief', 'object')"),
    (lambda v: LearningSpec(losses=v), "LearningSpec", "losses", "('next_step', 'masked_prediction')"),
    (lambda v: Field(2, 2, tags=v), "Field(h=2, w=2)", "tags", "('belief', 'object')"),
])
def test_an_unordered_collection_is_refused_naming_the_argument(kind, make, where, arg, example):
    with pytest.raises(CanvasTypeError) as info:
        make(UNORDERED[kind]())
    msg = str(info.value)
    assert isinstance(info.value, CanvasError) and isinstance(info.value, TypeError)
    assert msg.startswith(f"{where}: {arg} must be an ordered sequence such as {example}, got a ")
    assert "pass a tuple or a list" in msg


def test_region_program_and_field_refuse_a_set_of_tags_alike():
    def message(make):
        with pytest.raises(CanvasTypeError) as info:
            make()
        return str(info.value)

    program = message(lambda: RegionProgram(tags={"belief"}))
    field = message(lambda: Field(2, 2, tags={"belief"}))
    assert program.split(": ", 1)[1] == field.split(": ", 1)[1]


@pytest.mark.parametrize("make", [lambda: ("a", "b"), lambda: ["a", "b"], lambda: {"a": 0, "b": 1}.keys(),
                                  lambda: (t for t in "ab")], ids=["tuple", "list", "dict keys", "generator"])
def test_ordered_values_are_kept_in_their_order(make):
    assert RegionProgram(tags=make()).tags == ("a", "b")
    assert LearningSpec(losses=make()).losses == ("a", "b")


def test_the_other_refusals_still_hold():
    with pytest.raises(CanvasTypeError, match=r"tags must be a tuple of strings, got the string 'belief'"):
        RegionProgram(tags="belief")
    with pytest.raises(CanvasTypeError, match=r"every entry of losses must be a non-empty string"):
        LearningSpec(losses=("ok", ""))
