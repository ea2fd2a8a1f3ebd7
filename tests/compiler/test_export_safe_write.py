"""Region exports of compile modes go through the project's one writer (`_safe_write.py`): a file
they replace keeps its mode, every file is flushed to disk, a symlink is written through, and a
missing export folder is still created (docs/compiler.md, "Exported files")."""

import os
import stat

import torch
from safetensors.torch import load_file
from torch import nn

from canvas_core.compiler import ProgramCompiler
from canvas_core.program import CanvasProgram, RegionProgram
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection

LAYOUT = CanvasLayout(T=2, H=1, W=2, d_model=8, regions={"memory": (0, 2, 0, 1, 0, 1), "action": (0, 2, 0, 1, 1, 2)})
PROGRAM = CanvasProgram(
    schema=CanvasSchema(layout=LAYOUT, topology=CanvasTopology(connections=[Connection("action", "memory")])),
    regions={"memory": RegionProgram(compile_mode="export")})


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.regions = nn.ModuleDict({n: nn.Linear(8, 8) for n in LAYOUT.regions})


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_replaced_export_keeps_its_mode(tmp_path):
    for name, mode in (("memory.safetensors", 0o644), ("memory.json", 0o640)):
        (tmp_path / name).write_text("old")
        os.chmod(tmp_path / name, mode)
    model = Model()
    out = ProgramCompiler(PROGRAM).compile(module=model, export_dir=str(tmp_path))
    # safetensors' own writer creates 0600 files: the export used to lose the old file's mode
    assert _mode(tmp_path / "memory.safetensors") == 0o644
    assert _mode(tmp_path / "memory.json") == 0o640
    assert torch.equal(load_file(out.exported_paths["memory"])["weight"], model.regions["memory"].weight)
    assert sorted(os.listdir(tmp_path)) == ["memory.json", "memory.safetensors"]  # no temporary left


def test_a_new_export_gets_the_umask_mode_and_is_flushed_to_disk(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    old = os.umask(0o022)
    try:
        ProgramCompiler(PROGRAM).compile(module=Model(), export_dir=str(tmp_path / "new" / "exports"))
    finally:
        os.umask(old)
    folder = tmp_path / "new" / "exports"  # created, parents included
    assert _mode(folder / "memory.safetensors") == 0o644 and _mode(folder / "memory.json") == 0o644
    # each staged file (".memory.safetensors.<random>.tmp") and the folder were synced
    staged = [os.path.basename(p) for p in synced if os.path.dirname(p) == str(folder)]
    assert any(s.startswith(".memory.safetensors.") for s in staged)
    assert any(s.startswith(".memory.json.") for s in staged)
    assert str(folder) in synced


def test_an_export_through_a_symlink_writes_the_file_it_points_to(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "kept.safetensors"
    target.write_text("old")
    exports = tmp_path / "exports"
    exports.mkdir()
    os.symlink(target, exports / "memory.safetensors")
    model = Model()
    ProgramCompiler(PROGRAM).compile(module=model, export_dir=str(exports))
    assert os.path.islink(exports / "memory.safetensors")
    assert torch.equal(load_file(str(target))["bias"], model.regions["memory"].bias)


def test_an_export_directory_is_not_made_inside_a_read_only_folder(tmp_path):
    import pytest

    from canvas_core.errors import CompileError

    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)  # root ignores the mode: the check must not rely on os.access
    try:
        model = Model()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(CompileError, match="read-only"):
            ProgramCompiler(PROGRAM).compile(module=model, export_dir=str(locked / "new" / "exports"))
        assert os.listdir(locked) == []
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert all(p.requires_grad for p in model.parameters())
    finally:
        os.chmod(locked, 0o755)
