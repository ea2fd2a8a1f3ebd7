"""``load_canvas_checkpoint`` writes the file's values or refuses: a float32 value that the model's
dtype cannot hold (``1e5`` into a float16 model read ``inf``, into a float8_e4m3fn tensor it was
clamped to ``448``, both accepted) and a file holding different values for tied weights (the last
copy won) are refused, naming the tensor(s), and the model is left unchanged.

These tests need canvas.py to call ``canvas_core.checkpoints.loaded_values`` (``loaded_value`` for
each tensor, ``refuse_differing_ties`` after the loop over them)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import canvas_core as cc
from canvas_core.errors import CheckpointError
from tests.checkpoints._tiny_canvas import SCHEMA, Model

F8 = getattr(torch, "float8_e4m3fn", None)


def _saved(tmp_path, value: float) -> str:
    torch.manual_seed(0)
    m = Model()
    with torch.no_grad():
        m.head.weight[0, 0] = value
    path = str(tmp_path / "c.safetensors")
    cc.save_canvas_checkpoint(m, path, SCHEMA)
    return path


def _state(m: nn.Module) -> dict:
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same(before: dict, m: nn.Module) -> bool:
    return all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_float32_value_beyond_float16_is_refused_not_loaded_as_inf(tmp_path):
    path = _saved(tmp_path, 1e5)
    torch.manual_seed(1)
    m = Model().half()
    before = _state(m)
    with pytest.raises(CheckpointError, match=r"canvas checkpoint .*: tensor 'head\.weight' \(2, 4\) is torch\.float32 "
                                              r"in the file and the model's tensor is torch\.float16.*saved dtype"):
        cc.load_canvas_checkpoint(m, path, SCHEMA)
    assert _same(before, m)
    fits = _saved(tmp_path, 0.5)
    cc.load_canvas_checkpoint(m, fits, SCHEMA)  # values float16 holds still load, cast
    assert m.head.weight.dtype == torch.float16 and m.head.weight[0, 0].item() == 0.5


@pytest.mark.skipif(F8 is None, reason="this torch has no float8")
def test_float32_value_beyond_float8_is_refused_not_clamped(tmp_path):
    path = _saved(tmp_path, 1e5)
    m = Model()
    m.head.weight.data = m.head.weight.data.to(F8)
    before = _state(m)
    with pytest.raises(CheckpointError, match=r"'head\.weight' .*torch\.float8_e4m3fn in the model, whose largest "
                                              r"value is 448"):
        cc.load_canvas_checkpoint(m, path, SCHEMA)
    assert all(torch.equal(before[k].float(), v.float()) for k, v in m.state_dict().items())
    cc.load_canvas_checkpoint(m, _saved(tmp_path, 2.0), SCHEMA)
    assert m.head.weight.float()[0, 0].item() == 2.0


class Tied(Model):
    def __init__(self):
        super().__init__()
        self.out = nn.Linear(4, 2)
        self.out.weight = self.head.weight


def test_different_values_for_tied_weights_are_refused(tmp_path):
    torch.manual_seed(0)
    path = str(tmp_path / "tied.safetensors")
    cc.save_canvas_checkpoint(Tied(), path, SCHEMA)
    with safe_open(path, "pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(path)
    tensors["head.weight"], tensors["out.weight"] = torch.zeros(2, 4), torch.ones(2, 4)
    edited = str(tmp_path / "edited.safetensors")
    save_file(tensors, edited, metadata=meta)
    torch.manual_seed(1)
    m = Tied()
    before = _state(m)
    with pytest.raises(CheckpointError, match=r"tensors 'head\.weight' and 'out\.weight' are one tensor in the model"):
        cc.load_canvas_checkpoint(m, edited, SCHEMA)
    assert _same(before, m)
    cc.load_canvas_checkpoint(m, path, SCHEMA)  # the file as saved loads
    assert m.out.weight is m.head.weight


def test_bfloat16_round_trip_stays_exact(tmp_path):
    torch.manual_seed(0)
    m = Model().to(torch.bfloat16)
    path = str(tmp_path / "b.safetensors")
    cc.save_canvas_checkpoint(m, path, SCHEMA)
    torch.manual_seed(1)
    m2 = Model().to(torch.bfloat16)
    cc.load_canvas_checkpoint(m2, path, SCHEMA)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
