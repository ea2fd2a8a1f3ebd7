"""A failed set_loops gives a wrapper_class= wrapper back its child modules and its parameters'
requires_grad, not only its own attributes (the wrapped block is left alone)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import canvas_core as cc
from canvas_core.looping import loop_parts_of
from tests.looping._scope_setup import make_net

torch.set_num_threads(1)


class GrowingWrapper(nn.Module):
    """Per-loop gates in a child ModuleList that set_loops grows; a loop embedding it unfreezes."""

    def __init__(self, block: nn.Module, idx: int, max_loops: int, dim: int) -> None:
        super().__init__()
        self.original, self.idx, self.current_loops = block, idx, 1
        self.gates = nn.ModuleList([nn.Linear(dim, dim)])
        self.emb = nn.Embedding(max_loops, dim)
        self.emb.weight.requires_grad_(False)

    def set_loops(self, n: int) -> None:
        while len(self.gates) < n:
            self.gates.append(nn.Linear(self.gates[0].in_features, self.gates[0].in_features))
        self.emb.weight.requires_grad_(n <= 1)
        if self.idx == 2 and n > 1:
            raise ValueError("block 2 cannot loop")
        self.current_loops = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.original(x)


def test_a_failed_set_loops_restores_child_modules_and_flags() -> None:
    m = make_net()
    cc.graft_looped_blocks(m, max_loops=3, wrapper_class=GrowingWrapper)
    before = [(p.current_loops, len(p.gates), p.emb.weight.requires_grad) for p in loop_parts_of(m)]
    assert before[0][:2] == (1, 1)
    with pytest.raises(ValueError, match="block 2 cannot loop"):
        cc.set_loops(m, 3)
    assert [(p.current_loops, len(p.gates), p.emb.weight.requires_grad) for p in loop_parts_of(m)] == before
    cc.set_loops(m, 1)  # and it still works afterwards
