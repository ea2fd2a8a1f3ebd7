"""Reliability: bad arguments to ProgramCompiler.compile raise CompileError / CanvasTypeError."""

from __future__ import annotations

import dataclasses

import pytest
from torch import nn

from canvas_core.compiler.compiler import ProgramCompiler
from canvas_core.errors import CanvasTypeError, CompileError
from canvas_core.program import Field, compile_program


@dataclasses.dataclass
class _Net:
    a: Field = dataclasses.field(default_factory=lambda: Field(1, 1, compile_mode="freeze"))
    b: Field = dataclasses.field(default_factory=lambda: Field(1, 1, compile_mode="export"))
    c: Field = dataclasses.field(default_factory=lambda: Field(1, 1))


class _Mod(nn.Module):
    def __init__(self):
        super().__init__()
        self.regions = nn.ModuleDict({n: nn.Linear(2, 2) for n in "abc"})


def _compiler():
    return ProgramCompiler(compile_program(_Net())[1])


@pytest.mark.parametrize("device, match", [("bogus", "not a torch device type"), ("tpu", "Did you mean 'xpu'"),
                                           ("cuda:x", "not a device name"), ("", "not a device name")])
def test_bad_device_strings(device, match):
    with pytest.raises(CompileError, match=match):
        _compiler().compile(device=device)


@pytest.mark.parametrize("kw, match", [({"requires_grad": "yes"}, "requires_grad"), ({"resolve": 1}, "resolve"),
                                       ({"lower": None}, "lower"), ({"kernel": 3}, "kernel")])
def test_bad_flags(kw, match):
    with pytest.raises(CanvasTypeError, match=match):
        _compiler().compile(**kw)


@pytest.mark.parametrize("export_dir", ["", 3, "bad\x00dir"])
def test_bad_export_dir_changes_nothing_and_writes_nothing(tmp_path, monkeypatch, export_dir):
    monkeypatch.chdir(tmp_path)
    m = _Mod()
    with pytest.raises(CompileError, match="export_dir"):
        _compiler().compile(module=m, export_dir=export_dir)
    assert all(p.requires_grad for p in m.parameters())
    assert list(tmp_path.iterdir()) == []


def test_export_dir_still_works(tmp_path):
    m = _Mod()
    out = _compiler().compile(module=m, export_dir=str(tmp_path / "exp"))
    assert set(out.exported_paths) == {"b"}
    assert not any(p.requires_grad for p in m.regions["a"].parameters())


def test_cuda_index_beyond_the_devices_here(monkeypatch):
    from canvas_core.compiler import compiler as mod

    monkeypatch.setattr(mod, "_cuda_device_count", lambda: 2)
    with pytest.raises(CompileError, match="has 2 CUDA device"):
        _compiler().compile(device="cuda:5", resolve=False)
    monkeypatch.setattr(mod, "_cuda_device_count", lambda: 0)  # no CUDA here: cross-compiling is allowed
    assert _compiler().compile(device="cuda:5", resolve=False).device == "cuda:5"
