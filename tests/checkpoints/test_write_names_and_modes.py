"""The writer's temporary name fits NAME_MAX for long target names, and a file whose mode grants
write to nobody is refused whoever runs (root included: ``os.access`` always says yes to root)."""

import hashlib
import os
import stat

import pytest
import torch

from canvas_core._safe_write import atomic_write_text
from canvas_core.checkpoints import load_canvas_checkpoint, save_canvas_checkpoint
from canvas_core.errors import CanvasError, CheckpointError

from tests.checkpoints._tiny_canvas import SCHEMA, Model


def _name_max(path) -> int:
    try:
        return os.pathconf(path, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


@pytest.mark.parametrize("suffix", [".safetensors", ".é.safetensors"])
def test_a_target_name_near_name_max_is_written(tmp_path, suffix):
    limit = _name_max(tmp_path)
    name = "x" * (limit - len(suffix.encode("utf-8"))) + suffix  # exactly NAME_MAX bytes
    assert len(name.encode("utf-8")) == limit
    torch.manual_seed(0)
    model = Model()
    path = tmp_path / name
    save_canvas_checkpoint(model, path, SCHEMA)
    assert sorted(os.listdir(tmp_path)) == [name]  # no temporary file left
    other = Model()
    load_canvas_checkpoint(other, path, SCHEMA)
    assert torch.equal(other.head.weight, model.head.weight)
    atomic_write_text(tmp_path / ("y" * (limit - 5) + ".json"), "{}", "the schema")


@pytest.mark.parametrize("mode", [0o444, 0o400, 0o555])
def test_a_file_with_no_write_bit_is_refused_even_for_root(tmp_path, mode):
    path = tmp_path / "ro.safetensors"
    save_canvas_checkpoint(Model(), path, SCHEMA)
    os.chmod(path, mode)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        with pytest.raises(CheckpointError, match="read-only.*chmod u\\+w"):
            save_canvas_checkpoint(Model(), path, SCHEMA)
        with pytest.raises(CanvasError, match="read-only"):
            atomic_write_text(path, "{}", "the schema")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before
        assert stat.S_IMODE(os.stat(path).st_mode) == mode
        assert sorted(os.listdir(tmp_path)) == ["ro.safetensors"]
    finally:
        os.chmod(path, 0o644)


def test_a_file_writable_by_its_group_only_is_still_written(tmp_path):
    # some write bit is set: the mode does not mark it read-only (access decides, as before)
    path = tmp_path / "g.json"
    path.write_text("old")
    os.chmod(path, 0o620)
    try:
        atomic_write_text(path, "new", "the schema")
        assert path.read_text() == "new"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o620
    finally:
        os.chmod(path, 0o644)
