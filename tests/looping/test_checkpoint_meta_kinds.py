"""Loop checkpoints: modules on the meta device and integer dtypes are refused, nothing copied."""

import pytest
import torch

from canvas_core.errors import CheckpointError
from canvas_core.looping import load_loop_checkpoint, save_loop_checkpoint
from tests.looping.test_checkpoint import grafted

torch.set_num_threads(1)


def _saved(tmp_path):
    _, blocks, head = grafted()
    with torch.no_grad():
        for p in [p for b in blocks for p in b.loop_parameters()] + list(head.parameters()):
            p.normal_()
    path = tmp_path / "loops.safetensors"
    save_loop_checkpoint(blocks, head, str(path))
    return path


def test_head_on_meta_is_refused(tmp_path):
    path = _saved(tmp_path)
    _, blocks, head = grafted(seed=1)
    before = [p.clone() for b in blocks for p in b.loop_parameters()]
    with pytest.raises(CheckpointError, match="meta device"):
        load_loop_checkpoint(blocks, head.to("meta"), str(path))
    assert all(torch.equal(a, p) for a, p in zip(before, [p for b in blocks for p in b.loop_parameters()]))


def test_blocks_on_meta_are_refused(tmp_path):
    path = _saved(tmp_path)
    model, blocks, head = grafted(seed=1)
    model.to("meta")
    with pytest.raises(CheckpointError, match="meta device"):
        load_loop_checkpoint(blocks, head, str(path))
