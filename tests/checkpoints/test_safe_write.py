"""Writes never destroy: non-regular targets refused, symlinks written through, NaN refused before
the file is touched, atomic replacement (canvas_core._safe_write, loop checkpoints)."""

import os
import stat

import pytest
import torch
from torch import nn

from canvas_core._safe_write import atomic_write, atomic_write_text, check_write_target
from canvas_core.errors import CanvasError, CheckpointError
from canvas_core.looping import graft_looped_blocks, load_loop_checkpoint, save_loop_checkpoint


class Tiny(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.patch_embed = nn.Linear(4, d)
        self.blocks = nn.ModuleList([nn.Linear(d, d) for _ in range(2)])

    def forward(self, x):
        x = self.patch_embed(x)
        for b in self.blocks:
            x = b(x)
        return x


def _grafted():
    torch.manual_seed(0)
    m = Tiny()
    return graft_looped_blocks(m, max_loops=2, inner_dim=8, latent_channels=4)


def test_fifo_and_directory_and_device_are_refused_and_kept(tmp_path):
    blocks, head = _grafted()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="named pipe"):
        save_loop_checkpoint(blocks, head, str(fifo))
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    with pytest.raises(CheckpointError, match="directory"):
        save_loop_checkpoint(blocks, head, str(tmp_path))
    with pytest.raises(CanvasError, match="character device"):
        check_write_target("/dev/null", "the loop checkpoint")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert sorted(os.listdir(tmp_path)) == ["pipe"]  # no temporary file left behind


def test_symlink_is_written_through_keeping_mode(tmp_path):
    blocks, head = _grafted()
    target = tmp_path / "real.safetensors"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    link = tmp_path / "link.safetensors"
    os.symlink(target, link)
    save_loop_checkpoint(blocks, head, str(link))
    assert os.path.islink(link) and os.readlink(link) == str(target)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    blocks2, head2 = _grafted()
    load_loop_checkpoint(blocks2, head2, str(target))


def test_nan_refused_before_touching_a_good_checkpoint(tmp_path):
    blocks, head = _grafted()
    path = tmp_path / "loops.safetensors"
    save_loop_checkpoint(blocks, head, str(path))
    before = path.read_bytes()
    with torch.no_grad():
        blocks[1].loop_emb[0, 3] = float("nan")
    with pytest.raises(CheckpointError, match=r"blocks\.1\.loop_emb.*NaN"):
        save_loop_checkpoint(blocks, head, str(path))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["loops.safetensors"]


def test_failed_write_leaves_target_and_no_temp(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("good")

    def boom(tmp):
        with open(tmp, "w") as fh:
            fh.write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(CanvasError, match="No space left"):
        atomic_write(path, boom, "the schema")
    assert path.read_text() == "good" and os.listdir(tmp_path) == ["out.json"]


def test_new_file_gets_umask_mode_and_missing_dir_is_named(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.json", "{}", "the schema")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o640
    with pytest.raises(CanvasError, match="does not exist"):
        atomic_write_text(tmp_path / "no" / "a.json", "{}", "the schema")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write read-only files")
def test_read_only_file_refused(tmp_path):
    p = tmp_path / "ro.json"
    p.write_text("keep")
    os.chmod(p, 0o444)
    with pytest.raises(CanvasError, match="read-only"):
        atomic_write_text(p, "x", "the schema")
    assert p.read_text() == "keep"


def test_cli_schema_output_to_fifo_directory_or_missing_folder_is_exit_2(tmp_path, capsys):
    from canvas_core.cli import main

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for target, words in ((fifo, "named pipe"), (tmp_path, "directory"), (tmp_path / "no" / "s.json", "does not exist")):
        assert main(["schema", "-o", str(target)]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and err.count("\n") == 1
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert main(["schema", "-o", str(tmp_path / "s.json")]) == 0
    assert (tmp_path / "s.json").read_text().startswith("{")
