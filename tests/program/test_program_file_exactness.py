"""Program files stay exact or are refused: connection keys that two connections would share,
program versions this canvas-core cannot read, and compile modes that override each other."""

from __future__ import annotations

import json
import warnings

import pytest

from canvas_core import CanvasLayout, CanvasSchema, CanvasTopology, Connection, LearningSpec
from canvas_core.errors import ProgramError, SchemaFormatError
from canvas_core.program import CanvasProgram, ConnectionProgram, RegionProgram


def _schema(names, pairs):
    regions = {n: (0, 1, 0, 1, i, i + 1) for i, n in enumerate(names)}
    layout = CanvasLayout(T=1, H=1, W=len(names), d_model=8, regions=regions)
    return CanvasSchema(layout=layout, topology=CanvasTopology([Connection(s, t) for s, t in pairs]))


def test_two_connections_with_the_same_file_key_are_refused():
    schema = _schema(["a|b", "c", "a", "b|c"], [("a|b", "c"), ("a", "b|c")])
    for key in (("a|b", "c"), ("a", "b|c")):  # one program is enough: its key would read as either
        with pytest.raises(ProgramError, match=r"'a\|b\|c'.*could not tell them apart.*Rename a region") as info:
            CanvasProgram(schema=schema, connections={key: ConnectionProgram(operator="act")})
        assert "'a|b' -> 'c'" in str(info.value) and "'a' -> 'b|c'" in str(info.value)


@pytest.mark.parametrize("key", [("a|b", "c"), ("a", "b|c")])
def test_pipe_in_a_region_name_round_trips_when_the_key_is_unambiguous(key):
    # the regions a|b, c, a, b|c all exist, but only one of the two connections does
    program = CanvasProgram(schema=_schema(["a|b", "c", "a", "b|c"], [key]),
                            connections={key: ConnectionProgram(operator="act")})
    d = json.loads(program.to_json())
    assert list(d["connection_programs"]) == ["a|b|c"]  # canvas-engineering's "src|dst" key
    back = CanvasProgram.from_json(program.to_json())
    assert back == program and list(back.connections) == [key]


def test_future_program_version_is_refused_like_a_future_schema_version():
    d = CanvasProgram(schema=_schema(["a"], [("a", "a")])).to_dict()
    for major in ("99.0.0", "3", "1.0.0"):
        d["program_version"] = major
        with pytest.raises(SchemaFormatError, match=f"program_version '{major}' is not supported .*2.x"):
            CanvasProgram.from_dict(d)
    d["program_version"] = "2.7.1"  # a later minor version of the same format
    assert CanvasProgram.from_dict(d).version == "2.7.1"


def test_future_program_version_fails_canvas_compile(tmp_path, capsys):
    from canvas_core.cli import main

    d = CanvasProgram(schema=_schema(["a"], [("a", "a")])).to_dict()
    d["program_version"] = "99.0.0"
    path = tmp_path / "future.json"
    path.write_text(json.dumps(d))
    assert main(["compile", str(path)]) == 2
    assert "program_version '99.0.0' is not supported" in capsys.readouterr().err


def test_conflicting_compile_modes_warn_naming_region_and_winner():
    schema = _schema(["a", "b"], [("a", "b")])
    rp = RegionProgram(compile_mode="export", learning=LearningSpec(compile_mode="freeze"))
    with pytest.warns(UserWarning, match=r"region 'a': compile_mode='export' and learning.compile_mode='freeze' "
                                         r"disagree; learning.compile_mode wins, so the compiler applies 'freeze'"):
        CanvasProgram(schema=schema, regions={"a": rp})
    assert rp.effective_compile_mode == "freeze"


@pytest.mark.parametrize("rp", [
    RegionProgram(compile_mode="export"),
    RegionProgram(learning=LearningSpec(compile_mode="freeze")),         # compile_mode left at runtime
    RegionProgram(compile_mode="export", learning=LearningSpec(compile_mode="distill")),  # distill: no mode
    RegionProgram(compile_mode="freeze", learning=LearningSpec(compile_mode="freeze")),
])
def test_compatible_compile_modes_do_not_warn(rp):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CanvasProgram(schema=_schema(["a", "b"], [("a", "b")]), regions={"a": rp})
