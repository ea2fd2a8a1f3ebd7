"""Reliability: bad inputs to the program layer raise a clear CanvasError (regressions)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_core.errors import CanvasError, ProgramError, SchemaFormatError
from canvas_core.program import CanvasProgram, ClockSpec, Field, LearningSpec, compile_program


@dataclasses.dataclass
class _Robot:
    arm: Field = dataclasses.field(default_factory=lambda: Field(2, 2))
    act: Field = dataclasses.field(default_factory=lambda: Field(1, 1, family="action"))


def _program() -> CanvasProgram:
    return compile_program(_Robot())[1]


def test_from_json_empty_string_names_the_fix():
    with pytest.raises(SchemaFormatError, match="empty string"):
        CanvasProgram.from_json("")
    with pytest.raises(SchemaFormatError, match="empty string"):
        CanvasProgram.from_json("   ")


def test_from_json_nul_byte_path():
    with pytest.raises(SchemaFormatError, match="NUL byte"):
        CanvasProgram.from_json("prog\x00.json")


def test_from_json_too_deep_nesting_is_a_format_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(SchemaFormatError, match="too deeply"):
        CanvasProgram.from_json(deep)
    f = tmp_path / "deep.json"
    f.write_text("{\"a\": " + deep + "}")
    with pytest.raises(SchemaFormatError, match="deep.json"):
        CanvasProgram.from_json(str(f))


def test_from_json_round_trip_still_works(tmp_path):
    p = _program()
    path = tmp_path / "p.json"
    p.to_json(path)
    assert CanvasProgram.from_json(str(path)).to_dict() == p.to_dict()


def test_list_mixing_fields_and_other_values_is_refused():
    @dataclasses.dataclass
    class Mixed:
        xs: list = dataclasses.field(default_factory=lambda: [Field(1, 1), 3, "x"])

    with pytest.raises(ProgramError, match=r"xs\[1\] is 3") as ei:
        compile_program(Mixed())
    assert "Mixed" in str(ei.value)


def test_list_of_only_fields_and_non_field_attributes_still_compile():
    @dataclasses.dataclass
    class Ok:
        xs: list = dataclasses.field(default_factory=lambda: [Field(1, 1), Field(1, 1)])
        n: int = 3           # non-Field attributes are ignored (documented)
        names: list = dataclasses.field(default_factory=lambda: ["a", "b"])  # no Field: ignored

    bound, _ = compile_program(Ok())
    assert sorted(bound.field_names) == ["xs[0]", "xs[1]"]


_JUNK = st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.text(max_size=5),
                  st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=40, deadline=None)
@given(key=st.sampled_from(["h", "w", "period", "loss_weight", "attn", "semantic_type", "temporal_extent",
                            "family", "tags", "carrier", "spatial_shape", "clock", "compile_mode",
                            "is_output", "learning", "constraints", "identity"]), value=_JUNK)
def test_field_never_raises_anything_but_canvas_errors(key, value):
    try:
        Field(**{key: value})
    except CanvasError:
        pass


@settings(max_examples=40, deadline=None)
@given(key=st.sampled_from(["domain", "mode", "period", "event_source", "event_threshold", "cooldown",
                            "max_silence", "max_inner_steps"]), value=_JUNK)
def test_clockspec_never_raises_anything_but_canvas_errors(key, value):
    try:
        ClockSpec(**{key: value})
    except CanvasError:
        pass


@settings(max_examples=30, deadline=None)
@given(key=st.sampled_from(["mode", "losses", "compile_mode"]), value=_JUNK)
def test_learningspec_never_raises_anything_but_canvas_errors(key, value):
    try:
        LearningSpec(**{key: value})
    except CanvasError:
        pass


@settings(max_examples=40, deadline=None)
@given(path=st.lists(st.sampled_from(["layout", "regions", "topology", "region_programs", "T", "d_model",
                                      "arm", "act", "bounds", "family", "clock"]), min_size=1, max_size=3),
       value=_JUNK)
def test_from_dict_with_a_corrupted_entry_raises_only_schema_format_errors(path, value):
    d = json.loads(json.dumps(_program().to_dict()))
    node = d
    for k in path[:-1]:
        if not isinstance(node, dict) or k not in node:
            break
        node = node[k]
    if isinstance(node, dict):
        node[path[-1]] = value
    try:
        CanvasProgram.from_dict(d)
    except SchemaFormatError:
        pass
