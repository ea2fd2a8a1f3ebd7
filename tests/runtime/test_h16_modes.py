"""Compile modes on a module whose exported region is still on the meta device: refused naming the
region and the tensor, before anything changes (before: torch's bare NotImplementedError)."""

from __future__ import annotations

import os

import pytest
from torch import nn

from canvas_core.compiler import ProgramCompiler
from canvas_core.errors import CanvasError, CompileError
from canvas_core.program import CanvasProgram, RegionProgram
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection

LAYOUT = CanvasLayout(T=2, H=1, W=4, d_model=8, regions={"vision": (0, 2, 0, 1, 0, 2), "action": (0, 2, 0, 1, 2, 4)})
TOPOLOGY = CanvasTopology(connections=[Connection("vision", "vision"), Connection("action", "vision")])


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.regions = nn.ModuleDict({"vision": nn.Linear(8, 8, device="meta"), "action": nn.Linear(8, 8)})


def test_exporting_a_meta_region_is_refused_and_changes_nothing(tmp_path):
    program = CanvasProgram(schema=CanvasSchema(layout=LAYOUT, topology=TOPOLOGY),
                            regions={"vision": RegionProgram(compile_mode="export"),
                                     "action": RegionProgram(compile_mode="freeze")})
    model = Model()
    with pytest.raises(CompileError) as info:
        ProgramCompiler(program).compile(module=model, export_dir=str(tmp_path))
    msg = str(info.value)
    assert "region 'vision'" in msg and "meta device" in msg and "to_empty" in msg, msg
    assert isinstance(info.value, CanvasError)
    assert os.listdir(tmp_path) == []
    assert all(p.requires_grad for p in model.parameters())  # the freeze was not applied either


def test_a_home_relative_export_dir_is_expanded(tmp_path, monkeypatch):
    """``export_dir="~/exports"`` is the user's home folder, not a folder literally named ``~``."""
    from canvas_core.runtime.modes import _export_directory

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    got = _export_directory("~/exports")
    assert got == str(tmp_path / "home" / "exports") and os.path.isdir(got)
    assert not (tmp_path / "~").exists()
