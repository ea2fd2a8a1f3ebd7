"""Ambiguous safetensors headers are refused, naming the entry: a tensor or header entry given
twice (the safetensors library keeps the last silently), and a file holding one tensor under its
plain name and under torch.compile's ``_orig_mod.`` name.  The user metadata is decoded once."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import save_file

import canvas_core as cc
from canvas_core.checkpoints import canvas as canvas_module
from canvas_core.errors import CheckpointError
from tests.checkpoints._tiny_canvas import SCHEMA, Model

torch.set_num_threads(1)


def _saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "good.safetensors"
    cc.save_canvas_checkpoint(Model(), path, SCHEMA, metadata={"step": 1})
    return path


def _rewrite_header(src: Path, dst: Path, edit: Callable[[str], str]) -> None:
    """Write ``src`` to ``dst`` with its JSON header text passed through ``edit`` (kept as text,
    so that keys given twice survive)."""
    raw = src.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    text = edit(raw[8:8 + n].decode().rstrip())
    body = text.encode()
    body += b" " * (-len(body) % 8)
    dst.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n:])


@pytest.mark.parametrize("where", ["first", "last"])
def test_a_tensor_named_twice_is_refused(tmp_path, where):
    src, bad = _saved(tmp_path), tmp_path / "twice.safetensors"
    header = json.loads(src.read_bytes()[8:8 + struct.unpack("<Q", src.read_bytes()[:8])[0]])
    other = json.dumps({**header["head.bias"], "dtype": "I32"})  # same bytes, read as int32

    def edit(text: str) -> str:
        entry = f'"head.bias": {other}'
        return "{" + entry + "," + text[1:] if where == "first" else text[:-1] + "," + entry + "}"

    _rewrite_header(src, bad, edit)
    model = Model()
    before = model.head.bias.detach().clone()
    for call in (lambda: cc.load_canvas_checkpoint(model, bad, SCHEMA),
                 lambda: cc.read_canvas_checkpoint_header(bad)):
        with pytest.raises(CheckpointError, match=r"tensor 'head\.bias' more than once") as err:
            call()
        assert "twice.safetensors" in str(err.value) and "save the model again" in str(err.value)
    assert torch.equal(model.head.bias, before)


def test_a_header_entry_given_twice_is_refused(tmp_path):
    src, bad = _saved(tmp_path), tmp_path / "meta_twice.safetensors"

    def edit(text: str) -> str:  # a second user_metadata inside __metadata__
        return text.replace('"__metadata__":{', '"__metadata__":{"user_metadata":"{\\"step\\": 99}",', 1)

    _rewrite_header(src, bad, edit)
    assert '"user_metadata":"{\\"step\\": 99}"' in bad.read_bytes().decode("utf-8", "replace")
    with pytest.raises(CheckpointError, match="the header entry 'user_metadata' more than once"):
        cc.read_canvas_checkpoint_header(bad)


def test_plain_and_compiled_names_of_one_tensor_are_refused(tmp_path):
    src = _saved(tmp_path)
    header = cc.read_canvas_checkpoint_header(src)
    meta = {k: v for k, v in header.items() if k not in ("schema", "user_metadata")}
    meta.update(schema=json.dumps(SCHEMA.to_dict()), user_metadata="{}")
    state = {k: v.detach().clone() for k, v in Model().state_dict().items()}
    state["_orig_mod.head.bias"] = torch.full((2,), 7.0)
    both = tmp_path / "both.safetensors"
    save_file(state, str(both), metadata=meta)
    model = Model()
    before = model.head.bias.detach().clone()
    with pytest.raises(CheckpointError, match=r"both '_orig_mod\.head\.bias' and 'head\.bias'"):
        cc.load_canvas_checkpoint(model, both, SCHEMA)
    assert torch.equal(model.head.bias, before)
    del state["head.bias"]  # the compiled name alone still loads into the plain model
    save_file(state, str(both), metadata=meta)
    cc.load_canvas_checkpoint(model, both, SCHEMA)
    assert torch.equal(model.head.bias, torch.full((2,), 7.0))


def test_user_metadata_is_decoded_once(tmp_path, monkeypatch):
    src = _saved(tmp_path)
    calls = []
    real = canvas_module.read_metadata

    def counted(header, path):
        calls.append(path)
        return real(header, path)

    monkeypatch.setattr(canvas_module, "read_metadata", counted)
    assert cc.load_canvas_checkpoint(Model(), src, SCHEMA)["user_metadata"] == {"step": 1}
    assert len(calls) == 1
    calls.clear()
    assert cc.read_canvas_checkpoint_header(src)["user_metadata"] == {"step": 1}
    assert len(calls) == 1
