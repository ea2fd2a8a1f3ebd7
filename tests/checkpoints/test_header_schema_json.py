"""A checkpoint header whose schema JSON holds a number Python refuses to read, or a repeated key,
is a corrupt header named in the words schema files get (no advice to raise Python's digit limit,
no silently kept second value)."""

from __future__ import annotations

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

import canvas_core as cc
from canvas_core.errors import CheckpointError
from tests.checkpoints._tiny_canvas import SCHEMA, Model


@pytest.mark.parametrize("edit, message", [
    ('"T": ' + "9" * 5000, r"corrupt header: its 'schema' entry holds a number of 5,000 digits .*far too large"),
    ('"T": 2, "T": 5', r"corrupt header: its 'schema' entry: duplicate key 'T' in layout"),
])
def test_unreadable_schema_json_is_a_corrupt_header(tmp_path, edit, message) -> None:
    path = str(tmp_path / "m.safetensors")
    cc.save_canvas_checkpoint(Model(), path, SCHEMA)
    with safe_open(path, "pt") as f:
        header, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    header["schema"] = header["schema"].replace('"T": 2', edit, 1)
    save_file(tensors, path, metadata=header)
    with pytest.raises(CheckpointError, match=message) as info:
        cc.read_canvas_checkpoint_header(path)
    assert "set_int_max_str_digits" not in str(info.value)


@pytest.mark.parametrize("blank", ["", "   "])
def test_an_empty_schema_entry_says_to_save_again(tmp_path, blank) -> None:
    path = str(tmp_path / "m.safetensors")
    cc.save_canvas_checkpoint(Model(), path, SCHEMA)
    with safe_open(path, "pt") as f:
        header, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    header["schema"] = blank
    save_file(tensors, path, metadata=header)
    with pytest.raises(CheckpointError, match=r"its 'schema' entry is empty; save the model again") as info:
        cc.read_canvas_checkpoint_header(path)
    assert "give a file" not in str(info.value)
