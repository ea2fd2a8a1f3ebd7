"""A directory whose mode grants write to nobody (``chmod a-w``, 0555) keeps its files: every public
writer refuses to add a file to it or to replace one in it, whoever runs (root included, whom the
mode bits do not stop), with a ``CanvasError`` that says how to fix it; nothing is written, no
temporary file is left and the files already there keep their bytes and modes."""

import hashlib
import os
import stat

import pytest
import torch
from torch import nn

from canvas_core._safe_write import atomic_write_bytes, atomic_write_text, check_write_target
from canvas_core.checkpoints import save_canvas_checkpoint, save_safetensors_atomic
from canvas_core.errors import CanvasError, CheckpointError
from canvas_core.looping import graft_looped_blocks, save_loop_checkpoint

from tests.checkpoints._tiny_canvas import SCHEMA, Model


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Linear(4, 8)
        self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])


def _loops(path):
    torch.manual_seed(0)
    blocks, head = graft_looped_blocks(Backbone(), max_loops=2, inner_dim=8, latent_channels=4)
    save_loop_checkpoint(blocks, head, str(path))


def _snapshot(folder):
    """Every entry under ``folder``: its mode and, for a file, a hash of its bytes."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            digest = hashlib.sha256(open(p, "rb").read()).hexdigest() if stat.S_ISREG(st.st_mode) else None
            out[os.path.relpath(p, folder)] = (stat.S_IMODE(st.st_mode), digest)
    return out


WRITERS = {
    "canvas checkpoint": (lambda p: save_canvas_checkpoint(Model(), p, SCHEMA), CheckpointError),
    "loop checkpoint": (_loops, CheckpointError),
    "safetensors": (lambda p: save_safetensors_atomic({"w": torch.ones(2)}, p, None, "a test file",
                                                      error=CheckpointError), CheckpointError),
    "schema json": (lambda p: SCHEMA.to_json(p), CanvasError),
    "text": (lambda p: atomic_write_text(p, "new", "the test file"), CanvasError),
    "bytes, folders made": (lambda p: atomic_write_bytes(os.path.join(os.path.dirname(p), "a", "b", "f.bin"), b"x",
                                                         "the test file", make_parents=True), CanvasError),
    "check only": (lambda p: check_write_target(p, "the test file"), CanvasError),
}


@pytest.fixture
def locked(tmp_path):
    """A folder holding one file, then made read-only (0555); made writable again afterwards."""
    folder = tmp_path / "kept"
    folder.mkdir()
    (folder / "old.bin").write_bytes(b"precious")
    os.chmod(folder, 0o555)
    try:
        yield folder
    finally:
        os.chmod(folder, 0o755)


@pytest.mark.parametrize("existing", [False, True], ids=["new file", "existing file"])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_read_only_directory_is_refused_and_left_as_it_was(locked, writer, existing):
    write, error = WRITERS[writer]
    target = locked / ("old.bin" if existing else "new.safetensors")
    before = _snapshot(locked)
    with pytest.raises(error, match=r"directory .* is read-only \(mode 0555\).*chmod u\+w") as err:
        write(str(target))
    assert str(locked) in str(err.value)
    assert _snapshot(locked) == before  # no file added, no temporary left, the old one unchanged
    assert stat.S_IMODE(os.stat(locked).st_mode) == 0o555


def test_the_nearest_existing_folder_decides_when_folders_are_to_be_made(locked):
    target = locked / "x" / "y" / "f.json"
    with pytest.raises(CanvasError, match="read-only"):
        atomic_write_text(target, "{}", "the schema", make_parents=True)
    assert not (locked / "x").exists()


def test_the_cli_refuses_a_read_only_directory_with_exit_status_2(locked, capsys):
    from canvas_core.cli import main

    assert main(["schema", "-o", str(locked / "s.json")]) == 2
    err = capsys.readouterr().err
    assert "read-only" in err and "chmod u+w" in err and "Traceback" not in err
    assert sorted(os.listdir(locked)) == ["old.bin"]


@pytest.mark.parametrize("mode", [0o755, 0o705, 0o1777])
def test_a_directory_with_some_write_bit_is_still_written(tmp_path, mode):
    # a write bit for anyone: the mode does not mark the folder read-only (access decides, as before)
    folder = tmp_path / "open"
    folder.mkdir()
    os.chmod(folder, mode)
    try:
        if os.access(folder, os.W_OK | os.X_OK):
            atomic_write_text(folder / "f.json", "{}", "the schema")
            assert (folder / "f.json").read_text() == "{}"
    finally:
        os.chmod(folder, 0o755)
