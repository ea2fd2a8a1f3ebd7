"""Canvas checkpoints record the region names of the model's semantic conditioners and refuse,
before the model changes, a file whose conditioner was of other regions."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import canvas_core as cc
from canvas_core import CanvasLayout, CanvasSchema, SpatiotemporalCanvas
from canvas_core.errors import CheckpointError
from canvas_core.runtime.semantic_conditioner import SemanticConditioner

torch.set_num_threads(1)

KW = dict(T=1, H=2, W=2, d_model=8, regions={"a": (0, 1, 0, 1, 0, 2), "b": (0, 1, 1, 2, 0, 2)})
LAYOUT = CanvasLayout(**KW)
SCHEMA = CanvasSchema(layout=LAYOUT)


class _World(nn.Module):
    def __init__(self, names, seed: int, conditioner=None) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        cond = conditioner or SemanticConditioner(8, 4, {n: torch.randn(4, generator=g) for n in names})
        with torch.no_grad():
            cond.residuals.normal_(generator=g)
        self.canvas = SpatiotemporalCanvas(LAYOUT, semantic_conditioner=cond)
        self.head = nn.Linear(8, 2)


def _snapshot(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _changed(model: nn.Module, before: dict) -> list:
    return [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]


def test_the_header_names_the_conditioner_regions(tmp_path):
    path = tmp_path / "w.safetensors"
    cc.save_canvas_checkpoint(_World(["b", "a"], 0), path, SCHEMA, metadata={"step": 3})
    header = cc.read_canvas_checkpoint_header(path)
    assert header["conditioner_regions"] == {"canvas.semantic_conditioner": ["a", "b"]}
    assert header["user_metadata"] == {"step": 3}  # the user's metadata stays the user's


def test_a_file_of_other_regions_is_refused_and_nothing_loads(tmp_path):
    path = tmp_path / "w.safetensors"
    cc.save_canvas_checkpoint(_World(["a", "b"], 0), path, SCHEMA)
    target = _World(["a", "c"], 1)
    before = _snapshot(target)
    with pytest.raises(CheckpointError, match=r"regions \['a', 'b'\], the model's has \['a', 'c'\]") as info:
        cc.load_canvas_checkpoint(target, path, SCHEMA)
    assert "'canvas.semantic_conditioner'" in str(info.value) and "Nothing was loaded" in str(info.value)
    assert _changed(target, before) == []


def test_the_same_regions_load_and_the_header_comes_back_decoded(tmp_path):
    path = tmp_path / "w.safetensors"
    src = _World(["b", "a"], 0)
    cc.save_canvas_checkpoint(src, path, SCHEMA)
    dst = _World(["a", "b"], 1)
    header = cc.load_canvas_checkpoint(dst, path, SCHEMA)
    assert header["conditioner_regions"] == {"canvas.semantic_conditioner": ["a", "b"]}
    assert _changed(dst, _snapshot(src)) == []


def _rewrite_header(path, **change) -> None:
    with safe_open(str(path), framework="pt") as fh:
        header = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    header.update(change)
    save_file(tensors, str(path), {k: v for k, v in header.items() if v is not None})


def test_an_older_file_without_the_names_loads_by_row(tmp_path):
    path = tmp_path / "old.safetensors"
    src = _World(["a", "b"], 0)
    cc.save_canvas_checkpoint(src, path, SCHEMA)
    _rewrite_header(path, conditioner_regions=None)
    dst = _World(["a", "c"], 1)
    header = cc.load_canvas_checkpoint(dst, path, SCHEMA)
    assert "conditioner_regions" not in header
    assert _changed(dst, _snapshot(src)) == []


@pytest.mark.parametrize("entry", ["[1, 2", '["a"]', '{"canvas.semantic_conditioner": [1]}'])
def test_a_malformed_entry_is_a_corrupt_header(tmp_path, entry):
    path = tmp_path / "w.safetensors"
    cc.save_canvas_checkpoint(_World(["a", "b"], 0), path, SCHEMA)
    _rewrite_header(path, conditioner_regions=entry)
    target = _World(["a", "b"], 1)
    before = _snapshot(target)
    with pytest.raises(CheckpointError, match="corrupt header: its 'conditioner_regions' entry"):
        cc.load_canvas_checkpoint(target, path, SCHEMA)
    assert _changed(target, before) == []
    with pytest.raises(CheckpointError, match="corrupt header"):
        cc.read_canvas_checkpoint_header(path)


def test_a_compiled_model_records_the_plain_module_names(tmp_path):
    path = tmp_path / "w.safetensors"
    cc.save_canvas_checkpoint(torch.compile(_World(["a", "b"], 0)), path, SCHEMA)
    with safe_open(str(path), framework="pt") as fh:  # the raw header entry, no wrapper's segment in it
        assert json.loads(fh.metadata()["conditioner_regions"]) == {"canvas.semantic_conditioner": ["a", "b"]}
    target = _World(["a", "c"], 1)
    with pytest.raises(CheckpointError, match="only in the file: \\['b'\\]"):
        cc.load_canvas_checkpoint(torch.compile(target), path, SCHEMA)


def test_a_canvas_engineering_conditioner_in_the_model_is_checked_by_its_region_names(tmp_path):
    ce = pytest.importorskip("canvas_engineering")
    path = tmp_path / "w.safetensors"
    cc.save_canvas_checkpoint(_World(["a", "b"], 0), path, SCHEMA)
    theirs = ce.SemanticConditioner(8, 4, {"a": torch.randn(4), "c": torch.randn(4)})
    target = _World(None, 1, conditioner=theirs)
    before = _snapshot(target)
    with pytest.raises(CheckpointError, match="only in the model: \\['c'\\]"):
        cc.load_canvas_checkpoint(target, path, SCHEMA)
    assert _changed(target, before) == []


def test_a_model_with_a_canvas_engineering_conditioner_records_its_regions(tmp_path):
    ce = pytest.importorskip("canvas_engineering")
    path = tmp_path / "w.safetensors"
    theirs = ce.SemanticConditioner(8, 4, {"b": torch.randn(4), "a": torch.randn(4)})
    cc.save_canvas_checkpoint(_World(None, 0, conditioner=theirs), path, SCHEMA)
    assert cc.read_canvas_checkpoint_header(path)["conditioner_regions"] == {"canvas.semantic_conditioner": ["a", "b"]}
    with pytest.raises(CheckpointError, match="only in the file: \\['b'\\]; only in the model: \\['c'\\]"):
        cc.load_canvas_checkpoint(_World(["a", "c"], 1), path, SCHEMA)
