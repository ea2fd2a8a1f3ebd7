"""A model whose blocks are canvas layers called as ``x + block.delta(x)`` (the residual form
docs/world_models.md recommends) keeps working once grafted, at every scope (found in the audit:
a raw AttributeError 'LoopedBlockWrapper' object has no attribute 'delta')."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import canvas_core
from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection
from canvas_core.looping import graft_looped_blocks
from canvas_core.looping.scopes import loop_parts_of
from canvas_core.looping.span import LoopedSpan

LAYOUT = CanvasLayout(T=2, H=2, W=3, d_model=8, regions={"a": (0, 2, 0, 1, 0, 3), "b": (0, 2, 1, 2, 0, 2)})
TOPO = CanvasTopology(connections=[Connection("a", "a", t_src=0, t_dst=0), Connection("b", "a", t_src=0, t_dst=-1),
                                   Connection("b", "b", fn="pooling", t_src=0, t_dst=0)])


class DeltaStack(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([CanvasAttention(TOPO, LAYOUT, n_heads=2) for _ in range(3)])

    def forward(self, x):
        for b in self.blocks:
            x = x + b.delta(x)
        return x


def _reference(model, x, n, span):
    """The looped model written out: blocks before the span once, the span's blocks n times (the
    gates were set to 1, the loop embeddings are 0), the rest once."""
    i, j = span
    blocks = [getattr(b, "original", b) for b in model.blocks]
    for b in blocks[:i]:
        x = b(x)
    for _ in range(n):
        for b in blocks[i:j]:
            x = b(x)
    for b in blocks[j:]:
        x = b(x)
    return x


@pytest.mark.parametrize("scope", ["block", "stack", (1, 3), (0, 1)])
def test_delta_residual_model_is_the_backbone_at_init_and_loops_when_grafted(scope):
    x = torch.randn(2, LAYOUT.num_positions, 8)
    m = DeltaStack()
    with torch.no_grad():
        ref = m(x)
    graft_looped_blocks(m, max_loops=3, scope=scope)
    for n in (1, 2, 3):
        canvas_core.set_loops(m, n)
        with torch.no_grad():
            assert torch.allclose(m(x), ref, atol=1e-6), (scope, n)
    if scope == "block":
        return
    (part,) = loop_parts_of(m)
    assert isinstance(part, LoopedSpan)
    with torch.no_grad():
        part.loop_gate.fill_(1.0)  # plain recurrence h <- core(h)
    canvas_core.set_loops(m, 3)
    span = (0, 3) if scope == "stack" else scope
    with torch.no_grad():
        assert torch.allclose(m(x), _reference(m, x, 3, span), atol=1e-5)


def test_a_block_without_delta_still_has_none():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return x

    m = Plain()
    graft_looped_blocks(m, scope="block", inner_dim=8)
    with pytest.raises(AttributeError, match="has no attribute 'delta'"):
        m.blocks[0].delta(torch.randn(1, 3, 8))
