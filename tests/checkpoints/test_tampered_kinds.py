"""Tampered offsets, integer / bool dtypes, complex NaN and sparse tensors: refused with a CheckpointError."""

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import canvas_core as cc
from canvas_core.errors import CheckpointError
from canvas_core.schema import CanvasLayout, CanvasSchema

torch.set_num_threads(1)
SCHEMA = CanvasSchema(layout=CanvasLayout(T=2, spatial_shape=(2, 2), d_model=4, regions={"v": (0, 2, 0, 2, 0, 2)}))


class Net(nn.Module):
    def __init__(self, dtype=torch.int64, extra=None):
        super().__init__()
        self.canvas = cc.SpatiotemporalCanvas(SCHEMA.layout)
        self.head = nn.Linear(4, 2)
        self.register_buffer("count", torch.tensor([2**40 + 1]).to(dtype))
        if extra is not None:
            self.register_buffer("extra", extra)


def _rewrite(src, dst, change):
    raw = open(src, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = change(json.loads(raw[8:8 + n]))
    body = json.dumps(header).encode()
    open(dst, "wb").write(struct.pack("<Q", len(body)) + body + raw[8 + n:])


@pytest.mark.parametrize("offsets", [[], 5, [0], None])
def test_malformed_data_offsets_are_a_checkpoint_error(tmp_path, offsets):
    src, bad = tmp_path / "a.safetensors", tmp_path / "bad.safetensors"
    cc.save_canvas_checkpoint(Net(), src, SCHEMA)

    def change(h):
        h["head.weight"]["data_offsets"] = offsets
        return h

    _rewrite(src, bad, change)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        cc.load_canvas_checkpoint(Net(), bad, SCHEMA)


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_integer_tensor_of_another_dtype_is_refused_not_wrapped(tmp_path, dtype):
    path = tmp_path / "a.safetensors"
    cc.save_canvas_checkpoint(Net(), path, SCHEMA)
    target = Net(dtype)
    before = target.count.clone()
    with pytest.raises(CheckpointError, match="'count' is torch.int64 but the model's is"):
        cc.load_canvas_checkpoint(target, path, SCHEMA)
    assert torch.equal(target.count, before)


def test_float_tensors_are_cast_to_the_model_dtype(tmp_path):
    path = tmp_path / "a.safetensors"
    src = Net()
    cc.save_canvas_checkpoint(src, path, SCHEMA)
    target = Net().to(torch.float64)
    cc.load_canvas_checkpoint(target, path, SCHEMA)
    assert target.head.weight.dtype == torch.float64
    assert torch.equal(target.head.weight, src.head.weight.double())


def test_complex_nan_in_a_file_is_refused(tmp_path):
    good, bad = tmp_path / "a.safetensors", tmp_path / "nan.safetensors"
    cc.save_canvas_checkpoint(Net(extra=torch.zeros(2, dtype=torch.complex64)), good, SCHEMA)
    with safe_open(good, "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["extra"] = torch.tensor([complex(float("nan"), 0.0), 0j], dtype=torch.complex64)
    save_file(tensors, bad, metadata=meta)
    target = Net(extra=torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(CheckpointError, match="'extra' holds NaN"):
        cc.load_canvas_checkpoint(target, bad, SCHEMA)
    assert torch.equal(target.extra, torch.zeros(2, dtype=torch.complex64))


def test_sparse_tensor_is_refused_and_the_old_file_kept(tmp_path):
    path = tmp_path / "a.safetensors"
    cc.save_canvas_checkpoint(Net(), path, SCHEMA)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="sparse_coo"):
        cc.save_canvas_checkpoint(Net(extra=torch.eye(2).to_sparse()), path, SCHEMA)
    assert path.read_bytes() == before
