"""Loop checkpoints read the action head's state once per save and once per load (it was read
four times per load: the structure, the file-name map, the tensor check and the final copy)."""

from __future__ import annotations

import torch

import canvas_core as cc
from canvas_core.looping import load_loop_checkpoint, save_loop_checkpoint

from tests.looping._scope_setup import make_net

torch.set_num_threads(1)


def _count_state_dict_calls(head: torch.nn.Module) -> list:
    calls: list = []
    plain = head.state_dict

    def counted(*args, **kwargs):
        calls.append(1)
        return plain(*args, **kwargs)

    head.state_dict = counted  # instance attribute: only this head is counted
    return calls


def test_head_state_read_once_per_save_and_load(tmp_path):
    m = make_net()
    blocks, head = cc.graft_looped_blocks(m, max_loops=3, latent_channels=3)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.5)
    path = tmp_path / "loops.safetensors"
    calls = _count_state_dict_calls(head)
    save_loop_checkpoint(blocks, head, path)
    assert len(calls) == 1

    m2 = make_net()
    blocks2, head2 = cc.graft_looped_blocks(m2, max_loops=3, latent_channels=3)
    calls2 = _count_state_dict_calls(head2)
    load_loop_checkpoint(blocks2, head2, path)
    assert len(calls2) == 1
    for (n, a), (_, b) in zip(head.named_parameters(), head2.named_parameters()):
        assert torch.equal(a, b), n


def test_compiled_head_round_trip_still_maps_names(tmp_path):
    m = make_net()
    blocks, head = cc.graft_looped_blocks(m, max_loops=2, latent_channels=3)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_()
    path = tmp_path / "loops.safetensors"
    save_loop_checkpoint(blocks, torch.compile(head), path)
    m2 = make_net()
    blocks2, head2 = cc.graft_looped_blocks(m2, max_loops=2, latent_channels=3)
    load_loop_checkpoint(blocks2, torch.nn.DataParallel(head2), path)
    assert all(torch.equal(a, b) for a, b in zip(head.parameters(), head2.parameters()))
