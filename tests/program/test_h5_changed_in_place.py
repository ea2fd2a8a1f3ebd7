"""Schemas, topologies and programs changed in place after construction: saving or using them
checks them again, so a bad entry is named instead of crashing later or writing a file that
cannot be loaded back."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from canvas_core import CanvasLayout, CanvasProgram, CanvasSchema, CanvasTopology, Connection, Field, compile_program
from canvas_core.errors import CanvasTypeError, ProgramError, SchemaError, TopologyError
from canvas_core.program.specs import ConnectionProgram, RegionProgram


@dataclass
class _World:
    a: Field = Field(2, 2)
    b: Field = Field(1, 1)


def _program() -> CanvasProgram:
    return compile_program(_World(), T=2)[1]


def _layout() -> CanvasLayout:
    return CanvasLayout(T=2, H=2, W=2, d_model=4, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})


@pytest.mark.parametrize("change, error, text", [
    (lambda p: p.regions.__setitem__("zz", RegionProgram()), ProgramError, r"region program 'zz' names no region"),
    (lambda p: p.regions.__setitem__("a", "garbage"), CanvasTypeError, r"regions\['a'\] must be a RegionProgram"),
    (lambda p: p.connections.__setitem__(("a", "zz"), ConnectionProgram()), ProgramError, r"dst region 'zz'"),
    (lambda p: p.connections.__setitem__("a|b", ConnectionProgram()), CanvasTypeError, r"keys must be \(src, dst\)"),
    (lambda p: p.schema.metadata.__setitem__("x", {1, 2}), SchemaError, r"metadata must be JSON-serializable"),
    (lambda p: setattr(p, "version", 3), CanvasTypeError, r"version must be a non-empty string"),
], ids=["unknown-region", "not-a-region-program", "unknown-edge", "string-key", "set-in-metadata", "int-version"])
def test_a_program_changed_in_place_is_checked_before_it_is_saved(change, error, text):
    program = _program()
    change(program)
    with pytest.raises(error, match=text):
        program.to_json()


def test_summary_and_region_name_an_entry_that_is_not_a_region_program():
    program = _program()
    program.regions["a"] = "garbage"
    for call in (program.summary, lambda: program.region("a")):
        with pytest.raises(CanvasTypeError, match=r"regions\['a'\] must be a RegionProgram"):
            call()


def test_a_connection_that_is_not_one_is_named_by_validate_and_masks():
    layout = _layout()
    topology = CanvasTopology([Connection("a", "b")])
    topology.connections.append(("a", "b"))
    for call in (lambda: topology.validate(layout), lambda: topology.to_attention_mask(layout),
                 lambda: CanvasSchema(layout, topology)):
        with pytest.raises(CanvasTypeError, match=r"connection #1 must be a Connection, got tuple .*after the "
                                                  r"topology was built"):
            call()


def test_a_schema_is_not_saved_after_its_topology_gained_an_unknown_region():
    layout = _layout()
    topology = CanvasTopology([Connection("a", "b")])
    schema = CanvasSchema(layout, topology)
    topology.connections.append(Connection("a", "zz"))
    with pytest.raises(TopologyError, match=r"connection #1 \(a -> zz\): dst region 'zz'"):
        schema.to_json()


def test_an_unchanged_program_still_round_trips():
    program = _program()
    assert CanvasProgram.from_json(program.to_json()) == program
