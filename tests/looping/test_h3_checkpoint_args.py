"""``save_loop_checkpoint`` refuses an empty list of looped blocks (a file of no loops, which a
load misreported as saved from another scope) and saves the loops of blocks given as any
iterable, a generator included (it was spent before the tensors were read: saving wrote no loop,
loading loaded none and said nothing)."""

from __future__ import annotations

import os

import pytest
import torch

import canvas_core as cc
from canvas_core.errors import CanvasTypeError
from canvas_core.looping import looped_blocks_of, loop_parts_of

from tests.looping._scope_setup import make_net

torch.set_num_threads(1)


def test_empty_block_list_is_refused_before_writing(tmp_path):
    m = make_net()
    _, head = cc.graft_looped_blocks(m, max_loops=2, scope="stack", latent_channels=3)
    path = str(tmp_path / "loops.safetensors")
    assert looped_blocks_of(m) == []  # a span graft has no block-scope wrapper
    with pytest.raises(CanvasTypeError, match=r"looped_blocks is empty.*loop_parts_of\(model\)"):
        cc.save_loop_checkpoint(looped_blocks_of(m), head, path)
    assert not os.path.exists(path)


def test_generator_of_parts_saves_every_loop(tmp_path):
    m = make_net()
    parts, head = cc.graft_looped_blocks(m, max_loops=2, scope="stack", latent_channels=3)
    with torch.no_grad():
        for p in parts[0].loop_parameters():
            p.add_(0.5)
    path = str(tmp_path / "loops.safetensors")
    cc.save_loop_checkpoint((p for p in loop_parts_of(m)), head, path)
    fresh = make_net()
    parts2, head2 = cc.graft_looped_blocks(fresh, max_loops=2, scope="stack", latent_channels=3)
    cc.load_loop_checkpoint(iter(parts2), head2, path)
    for a, b in zip(parts[0].loop_parameters(), parts2[0].loop_parameters()):
        assert torch.equal(a, b)
