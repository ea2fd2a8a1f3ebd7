"""Reliability: bad grafts, checkpoints and schedules in canvas_core.looping (regressions)."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from canvas_core.errors import BackboneError, CanvasTypeError, CheckpointError, ShapeError
from canvas_core.looping import (
    CurriculumScheduler,
    graft_looped_blocks,
    load_loop_checkpoint,
    looped_blocks_of,
    save_loop_checkpoint,
)


class _Blk(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):
        return x + self.lin(x)


class _Model(nn.Module):
    def __init__(self, d=8, n=2):
        super().__init__()
        self.blocks = nn.ModuleList([_Blk(d) for _ in range(n)])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def _grafted(**kw):
    m = _Model()
    torch.manual_seed(0)
    blocks, head = graft_looped_blocks(m, inner_dim=8, **kw)
    return m, blocks, head


def _snapshot(blocks, head):
    return [p.detach().clone() for b in blocks for p in b.loop_parameters()] + \
        [t.clone() for t in head.state_dict().values()]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_graft_bad_block_attr():
    with pytest.raises(CanvasTypeError, match="block_attr"):
        graft_looped_blocks(_Model(), block_attr=3)


def test_graft_with_an_adapter_for_another_backbone_leaves_the_model_unchanged():
    from canvas_core.looping.adapter import GenericAdapter

    class NoHidden(GenericAdapter):
        def stream_dims(self, model):
            return (model.config.hidden_size,)  # the model has no config

    m = _Model()
    first = m.blocks[0]
    with pytest.raises(BackboneError, match="cannot read the structure of _Model"):
        graft_looped_blocks(m, adapter=NoHidden("blocks", 8))
    assert m.blocks[0] is first


def test_looped_blocks_of_needs_a_module():
    with pytest.raises(CanvasTypeError, match="looped_blocks_of"):
        looped_blocks_of(3)


def test_looped_block_refuses_integer_and_flat_inputs():
    _, blocks, _ = _grafted()
    with pytest.raises(ShapeError, match="floating"):
        blocks[0](torch.zeros(1, 3, 8, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"must be \(B, N, 8\)"):
        blocks[0](torch.zeros(3, 8))


@pytest.mark.parametrize("kw, exc, match", [
    ({"looped_blocks": 3}, CanvasTypeError, "looped_blocks"),
    ({"action_head": 3}, CanvasTypeError, "action_head"),
    ({"path": 3}, CanvasTypeError, "path"),
    ({"metadata": [1]}, CheckpointError, "metadata must be a dict"),
])
def test_save_bad_arguments(tmp_path, kw, exc, match):
    _, blocks, head = _grafted()
    args = {"looped_blocks": blocks, "action_head": head, "path": str(tmp_path / "x.safetensors")}
    args.update(kw)
    with pytest.raises(exc, match=match):
        save_loop_checkpoint(**args)


def test_save_to_a_directory_or_unwritable_place(tmp_path):
    _, blocks, head = _grafted()
    with pytest.raises(CheckpointError, match="is a directory"):
        save_loop_checkpoint(blocks, head, str(tmp_path))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot write the loop checkpoint"):
        save_loop_checkpoint(blocks, head, str(blocker / "sub" / "x.safetensors"))


def test_load_bad_paths_and_foreign_files(tmp_path):
    _, blocks, head = _grafted()
    with pytest.raises(CanvasTypeError, match="path"):
        load_loop_checkpoint(blocks, head, None)
    with pytest.raises(CanvasTypeError, match="looped_blocks"):
        load_loop_checkpoint(3, head, str(tmp_path / "x"))
    with pytest.raises(CheckpointError, match="is a directory"):
        load_loop_checkpoint(blocks, head, str(tmp_path))
    pkl = tmp_path / "state.pt"
    torch.save({"a": torch.zeros(1)}, pkl)
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_loop_checkpoint(blocks, head, str(pkl))
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_loop_checkpoint(blocks, head, str(raw))


def _tampered(tmp_path, blocks, head, edit):
    good = tmp_path / "good.safetensors"
    save_loop_checkpoint(blocks, head, str(good))
    with safe_open(str(good), "pt") as f:
        header = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    edit(tensors)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=header)
    return str(bad)


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.__setitem__("blocks.0.loop_emb", torch.zeros(1)), r"'blocks.0.loop_emb' has shape \(1,\)"),
    (lambda t: t.__setitem__("blocks.1.loop_emb", t["blocks.1.loop_emb"].long()), "torch.int64"),
    (lambda t: t.pop("blocks.1.loop_emb"), "lacks tensor 'blocks.1.loop_emb'"),
    (lambda t: t.__setitem__("head.net.0.bias", torch.zeros(1, 1)), r"'head.net.0.bias' has shape \(1, 1\)"),
    (lambda t: t.__setitem__("head.extra", torch.zeros(1)), "action-head tensors"),
])
def test_tampered_tensors_are_refused_and_nothing_is_loaded(tmp_path, edit, match):
    _, blocks, head = _grafted()
    path = _tampered(tmp_path, blocks, head, edit)
    with torch.no_grad():  # make the model differ from the file so a partial load would show
        for b in blocks:
            for p in b.loop_parameters():
                p.add_(1.0)
    before = _snapshot(blocks, head)
    with pytest.raises(CheckpointError, match=match):
        load_loop_checkpoint(blocks, head, path)
    assert _same(before, _snapshot(blocks, head))


def test_good_checkpoint_still_round_trips(tmp_path):
    _, blocks, head = _grafted()
    path = str(tmp_path / "ok.safetensors")
    save_loop_checkpoint(blocks, head, path)
    want = _snapshot(blocks, head)
    with torch.no_grad():
        for b in blocks:
            for p in b.loop_parameters():
                p.zero_()
    load_loop_checkpoint(blocks, head, path)
    assert _same(want, _snapshot(blocks, head))


def test_curriculum_step_bad_blocks():
    cs = CurriculumScheduler(max_loops=2, total_steps=10)
    with pytest.raises(CanvasTypeError, match="list of looped blocks"):
        cs.step(3, 0)
    _, blocks, _ = _grafted(max_loops=2)
    assert cs.step(blocks[0], 9) == 2  # a single block is accepted


def test_checkpoint_whose_header_length_starts_like_a_pickle_still_loads(tmp_path):
    _, blocks, head = _grafted()
    path = str(tmp_path / "ok.safetensors")
    for n in range(300):  # pad the metadata until the header length's low byte is 0x80
        save_loop_checkpoint(blocks, head, path, metadata={"pad": "x" * n})
        with open(path, "rb") as fh:
            if fh.read(1) == b"\x80":
                break
    else:  # pragma: no cover
        pytest.fail("could not produce a header length with low byte 0x80")
    assert load_loop_checkpoint(blocks, head, path)["user_metadata"]["pad"] == "x" * n


def test_numpy_integers_count_as_integers_everywhere():
    """Loop counts read from a numpy array (a sweep's grid) are taken as the schema takes them, by
    graft_looped_blocks, set_loops, LoopedBlockWrapper.set_loops and the schedulers; a float or
    a bool still is not."""
    import numpy as np

    import canvas_core

    model = _Model()
    graft_looped_blocks(model, max_loops=np.int64(3), freeze="none", inner_dim=8)
    assert all(type(b.max_loops) is int and b.max_loops == 3 for b in looped_blocks_of(model))
    canvas_core.set_loops(model, np.int32(2))
    assert all(b.current_loops == 2 for b in looped_blocks_of(model))
    looped_blocks_of(model)[0].set_loops(np.uint8(1))
    assert looped_blocks_of(model)[0].current_loops == 1
    sched = CurriculumScheduler(max_loops=np.int64(3), total_steps=np.int64(10))
    assert sched.max_loops == 3
    for bad in (2.0, True):
        with pytest.raises((BackboneError, CanvasTypeError)):
            graft_looped_blocks(_Model(), max_loops=bad, inner_dim=8)
