"""A failing compile with a module leaves the module and the export directory unchanged."""

import json
import os
import struct

import pytest
import torch
from torch import nn

from canvas_core.compiler import ProgramCompiler
from canvas_core.errors import CanvasError, CompileError
from canvas_core.program import CanvasProgram, RegionProgram
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection

LAYOUT = CanvasLayout(T=2, H=2, W=4, d_model=8, regions={
    "vision": (0, 2, 0, 1, 0, 4), "belief": (0, 2, 1, 2, 0, 2),
    "memory": (0, 2, 1, 2, 2, 3), "action": (0, 2, 1, 2, 3, 4)})
TOPO = CanvasTopology(connections=[Connection("vision", "vision"), Connection("belief", "memory"),
                                   Connection("action", "belief"), Connection("memory", "action")])


def _program(**modes):
    return CanvasProgram(schema=CanvasSchema(layout=LAYOUT, topology=TOPO),
                         regions={n: RegionProgram(compile_mode=m) for n, m in modes.items()})


class Sub(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.register_buffer("stat", torch.arange(3.0))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.regions = nn.ModuleDict({n: Sub() for n in LAYOUT.regions})


def _snapshot(m):
    return ({k: v.clone() for k, v in m.state_dict().items()},
            {n: p.requires_grad for n, p in m.named_parameters()},
            sorted(n for n, _ in m.named_buffers()))


def _assert_same(a, b):
    assert a[1] == b[1] and a[2] == b[2] and a[0].keys() == b[0].keys()
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0])


PROGRAM = _program(vision="freeze", memory="export", action="export", belief="constant")


def test_directory_in_place_of_an_export_file_fails_before_anything_changes(tmp_path):
    model = Model()
    before = _snapshot(model)
    os.mkdir(tmp_path / "action.safetensors")
    with pytest.raises(CompileError, match="action"):
        ProgramCompiler(PROGRAM).compile(module=model, export_dir=str(tmp_path))
    _assert_same(before, _snapshot(model))
    assert sorted(os.listdir(tmp_path)) == ["action.safetensors"]  # no half-written memory export


def test_serialization_error_of_a_later_region_is_a_compile_error_and_changes_nothing(tmp_path, monkeypatch):
    import safetensors.torch as st

    real = st.save_file
    calls = []

    def flaky(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("disk full")  # e.g. safetensors' SafetensorError, not an OSError
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(st, "save_file", flaky)
    model = Model()
    before = _snapshot(model)
    with pytest.raises(CanvasError, match="disk full"):
        ProgramCompiler(PROGRAM).compile(module=model, export_dir=str(tmp_path))
    _assert_same(before, _snapshot(model))
    assert os.listdir(tmp_path) == []  # the first region's staged files were removed too


def test_successful_compile_applies_everything_and_twice_is_idempotent(tmp_path):
    model = Model()
    c1 = ProgramCompiler(PROGRAM).compile(module=model, export_dir=str(tmp_path))
    assert c1.active_regions == {"vision"} and c1.n_eliminated == 3
    assert all(not p.requires_grad for p in model.regions["vision"].parameters())
    assert list(model.regions["belief"].parameters()) == []
    assert set(c1.constant_buffers["belief"]) == {"lin.weight", "lin.bias", "stat"}
    for name in ("memory", "action"):
        path = c1.exported_paths[name]
        raw = open(path, "rb").read()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        assert header["__metadata__"]["region"] == name
        assert all(not p.requires_grad for p in model.regions[name].parameters())
    assert sorted(os.listdir(tmp_path)) == ["action.json", "action.safetensors", "memory.json",
                                            "memory.safetensors"]
    keys = set(model.state_dict())
    c2 = ProgramCompiler(PROGRAM).compile(module=model, export_dir=str(tmp_path))
    assert c2 == c1 and set(model.state_dict()) == keys
    assert set(c2.constant_buffers["belief"]) == set(c1.constant_buffers["belief"])
    assert sorted(os.listdir(tmp_path)) == ["action.json", "action.safetensors", "memory.json",
                                            "memory.safetensors"]
