"""A checkpoint header's ``user_metadata`` reads back only as what saving writes: a JSON object of
finite numbers. A hand-edited ``NaN`` or a list is a corrupt header (``CheckpointError``), in the
canvas and the loop checkpoint readers alike."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from canvas_core.errors import CheckpointError

torch.set_num_threads(1)


def _rewrite_metadata(path, text):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        header = dict(f.metadata())
    tensors = load_file(str(path))
    header["user_metadata"] = text
    save_file(tensors, str(path), metadata=header)


@pytest.mark.parametrize("text", ['{"loss": NaN}', '{"x": Infinity}', "[1, 2]", '"text"'])
def test_canvas_checkpoint_header_refuses_what_saving_never_writes(tmp_path, text):
    from canvas_core import AttentionDispatcher, CanvasLayout, CanvasSchema, CanvasTopology
    from canvas_core.checkpoints import load_canvas_checkpoint, read_canvas_checkpoint_header, save_canvas_checkpoint

    layout = CanvasLayout(T=1, H=1, W=2, d_model=8, regions={"a": (0, 1, 0, 1, 0, 1), "b": (0, 1, 0, 1, 1, 2)})
    topo = CanvasTopology.dense(["a", "b"])
    model = AttentionDispatcher(topo, layout, 8, 2)
    path = tmp_path / "c.safetensors"
    save_canvas_checkpoint(model, path, CanvasSchema(layout=layout, topology=topo), metadata={"loss": 1.0})
    _rewrite_metadata(path, text)
    with pytest.raises(CheckpointError, match="user_metadata"):
        read_canvas_checkpoint_header(path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="user_metadata"):
        load_canvas_checkpoint(model, path, CanvasSchema(layout=layout, topology=topo))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_saved_metadata_reads_back(tmp_path):
    from canvas_core import AttentionDispatcher, CanvasLayout, CanvasSchema, CanvasTopology
    from canvas_core.checkpoints import read_canvas_checkpoint_header, save_canvas_checkpoint

    layout = CanvasLayout(T=1, H=1, W=2, d_model=8, regions={"a": (0, 1, 0, 1, 0, 1), "b": (0, 1, 0, 1, 1, 2)})
    topo = CanvasTopology.dense(["a", "b"])
    path = tmp_path / "c.safetensors"
    meta = {"step": 3, "tags": ["x", "y"], "nested": {"lr": 1e-3}}
    save_canvas_checkpoint(AttentionDispatcher(topo, layout, 8, 2), path, CanvasSchema(layout=layout, topology=topo),
                           metadata=meta)
    assert read_canvas_checkpoint_header(path)["user_metadata"] == json.loads(json.dumps(meta))


def test_the_loop_checkpoint_reader_uses_the_same_rule():
    import inspect

    from canvas_core.checkpoints.tensors import read_metadata
    from canvas_core.looping import checkpoint as loop_ckpt

    assert "read_metadata(header, path)" in inspect.getsource(loop_ckpt.load_loop_checkpoint)
    assert read_metadata({"user_metadata": '{"a": [1, 2.5]}'}, "x") == {"a": [1, 2.5]}
    with pytest.raises(CheckpointError, match="NaN is not a finite number"):
        read_metadata({"user_metadata": '{"a": NaN}'}, "x")
