"""Hostile inputs to canvas checkpoints, each refused with a CheckpointError that names the
culprit (before: a RecursionError, NotImplementedError or RuntimeError leaked, or a vague message),
and nothing half-done: metadata nested too deeply or holding itself, float8 tensors, tensors of
dtypes safetensors cannot hold, an expanded (stride-0) buffer in the model loaded into, and
symbolic links that lead nowhere."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

import canvas_core as cc
from canvas_core.errors import CheckpointError
from tests.checkpoints._tiny_canvas import SCHEMA, Model

torch.set_num_threads(1)


def _model(seed: int = 0, **buffers: torch.Tensor) -> Model:
    torch.manual_seed(seed)
    m = Model()
    for name, t in buffers.items():
        m.register_buffer(name, t)
    return m


def _deep(levels: int) -> list:
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


def _cycle() -> dict:
    d: dict = {"step": 1}
    d["again"] = d
    return d


@pytest.mark.parametrize("metadata, words", [
    ({"x": _deep(5000)}, "nested too deeply"),
    (_cycle(), "holds itself at metadata['again']"),
])
def test_metadata_json_cannot_write_is_refused(tmp_path, metadata, words):
    path = tmp_path / "m.safetensors"
    with pytest.raises(CheckpointError, match=r"save_canvas_checkpoint: metadata") as err:
        cc.save_canvas_checkpoint(_model(), path, SCHEMA, metadata=metadata)
    assert words in str(err.value)
    assert not path.exists()


def test_float8_tensors_save_load_and_their_nan_is_refused(tmp_path):
    f8 = getattr(torch, "float8_e4m3fn", None)
    if f8 is None:
        pytest.skip("this torch has no float8")
    path = tmp_path / "f8.safetensors"
    good = torch.tensor([1.0, -2.0]).to(f8)
    cc.save_canvas_checkpoint(_model(0, scale=good), path, SCHEMA)
    loaded = _model(1, scale=torch.zeros(2).to(f8))
    cc.load_canvas_checkpoint(loaded, path, SCHEMA)
    assert torch.equal(loaded.scale.float(), good.float())
    bad = torch.tensor([float("nan"), 1.0]).to(f8)
    with pytest.raises(CheckpointError, match=r"tensor 'scale' \(2,\) holds 1 NaN"):
        cc.save_canvas_checkpoint(_model(0, scale=bad), path, SCHEMA)
    cc.load_canvas_checkpoint(loaded, path, SCHEMA)  # the good file was left as it was


@pytest.mark.parametrize("kind", ["complex128", "qint8"])
def test_a_dtype_safetensors_cannot_hold_is_refused_by_name(tmp_path, kind):
    if kind == "complex128":
        t, words = torch.ones(2, dtype=torch.complex128), "view_as_real"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized tensors are deprecated in recent torch
            t, words = torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8), ".dequantize()"
    path = tmp_path / "c.safetensors"
    with pytest.raises(CheckpointError, match=rf"tensor 'extra' is torch\.{kind}, which safetensors cannot hold") as err:
        cc.save_canvas_checkpoint(_model(0, extra=t), path, SCHEMA)
    assert words in str(err.value)
    assert not path.exists()


def test_an_expanded_buffer_is_refused_before_anything_is_loaded(tmp_path):
    path = tmp_path / "e.safetensors"
    cc.save_canvas_checkpoint(_model(0, table=torch.ones(4, 1).expand(4, 5)), path, SCHEMA)
    model = _model(1, table=torch.zeros(4, 1).expand(4, 5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"tensor 'table' \(4, 5\) is an expanded view") as err:
        cc.load_canvas_checkpoint(model, path, SCHEMA)
    assert ".clone()" in str(err.value)
    for k, v in model.state_dict().items():  # head.* come before 'table': they were loaded before
        assert torch.equal(v, before[k]), k
    fixed = _model(1, table=torch.zeros(4, 5))
    cc.load_canvas_checkpoint(fixed, path, SCHEMA)
    assert torch.equal(fixed.table, torch.ones(4, 5))


def test_links_that_lead_nowhere_say_so(tmp_path):
    dangling, loop_a, loop_b = tmp_path / "dangling", tmp_path / "a", tmp_path / "b"
    os.symlink(tmp_path / "moved.safetensors", dangling)
    os.symlink(loop_b, loop_a)
    os.symlink(loop_a, loop_b)
    with pytest.raises(CheckpointError, match="is a symbolic link to .*moved.safetensors', which does not exist"):
        cc.load_canvas_checkpoint(_model(), dangling, SCHEMA)
    with pytest.raises(CheckpointError, match="symbolic link in a loop of links"):
        cc.read_canvas_checkpoint_header(loop_a)
    with pytest.raises(CheckpointError, match="does not exist"):  # a plain missing path is unchanged
        cc.load_canvas_checkpoint(_model(), tmp_path / "absent.safetensors", SCHEMA)


def test_a_path_that_is_not_utf8_is_refused_both_ways(tmp_path):
    odd = os.path.join(str(tmp_path), "\udcff.safetensors")  # a file name byte 0xff, no character
    with pytest.raises(CheckpointError, match="not valid UTF-8"):
        cc.save_canvas_checkpoint(_model(), odd, SCHEMA)
    assert os.listdir(tmp_path) == []  # before: written, then no load could open it
    good = tmp_path / "good.safetensors"
    cc.save_canvas_checkpoint(_model(), good, SCHEMA)
    os.rename(good, odd)
    with pytest.raises(CheckpointError, match="not valid UTF-8.*rename the file"):
        cc.load_canvas_checkpoint(_model(), odd, SCHEMA)


def test_inference_tensors_are_refused_outside_inference_mode(tmp_path):
    path = tmp_path / "i.safetensors"
    cc.save_canvas_checkpoint(_model(0), path, SCHEMA)
    with torch.inference_mode():
        model = _model(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"made under torch\.inference_mode\(\)") as err:
        cc.load_canvas_checkpoint(model, path, SCHEMA)
    assert "'head.weight'" in str(err.value) and "with torch.inference_mode():" in str(err.value)
    for k, v in model.state_dict().items():  # before: a RuntimeError, with every tensor already copied
        assert torch.equal(v, before[k]), k
    with torch.inference_mode():
        cc.load_canvas_checkpoint(model, path, SCHEMA)
    assert torch.equal(model.head.weight, _model(0).head.weight)


def test_lazy_modules_save_once_shaped_and_load_into_unshaped(tmp_path):
    path = tmp_path / "lazy.safetensors"
    model = _model(0)
    model.lazy = torch.nn.LazyLinear(3)
    with pytest.raises(CheckpointError, match=r"tensor 'lazy.weight' is an uninitialized parameter") as err:
        cc.save_canvas_checkpoint(model, path, SCHEMA)
    assert "run one forward" in str(err.value) and not path.exists()
    model.lazy(torch.zeros(1, 4))
    cc.save_canvas_checkpoint(model, path, SCHEMA)
    fresh = _model(1)
    fresh.lazy = torch.nn.LazyLinear(3)  # not shaped yet: the load gives it the saved shape
    cc.load_canvas_checkpoint(fresh, path, SCHEMA)
    assert torch.equal(fresh.lazy.weight, model.lazy.weight)


def test_float8_e8m0_tensors_save_and_load(tmp_path):
    """safetensors writes and reads float8_e8m0fnu although its read table lacks it (0.8)."""
    e8 = getattr(torch, "float8_e8m0fnu", None)
    if e8 is None:
        pytest.skip("this torch has no float8_e8m0fnu")
    path = tmp_path / "e8.safetensors"
    good = torch.tensor([1.0, 4.0]).to(e8)
    cc.save_canvas_checkpoint(_model(0, scale=good), path, SCHEMA)
    loaded = _model(1, scale=torch.ones(2).to(e8))
    cc.load_canvas_checkpoint(loaded, path, SCHEMA)
    assert torch.equal(loaded.scale.float(), good.float())
