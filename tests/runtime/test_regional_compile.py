"""compile_blocks: the repeated block of a canvas model is traced once and reused by every block,
without graph breaks, and computes what the eager model computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from canvas_core import AttentionDispatcher, CanvasLayout, CanvasTopology, Connection, compile_blocks
from canvas_core.errors import CanvasTypeError
from canvas_core.runtime.regional_compile import find_blocks


def _layout():
    return CanvasLayout(T=3, H=2, W=4, d_model=16, regions={"v": (0, 3, 0, 1, 0, 4), "a": (0, 3, 1, 2, 0, 4)})


class Block(nn.Module):
    def __init__(self, topology, layout):
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.attn = AttentionDispatcher(topology, layout, 16, 2)
        self.mlp = nn.Linear(16, 16)

    def forward(self, x):
        x = x + self.attn.delta(self.norm(x))
        return x + self.mlp(x)


class Net(nn.Module):
    def __init__(self, topology, depth=3):
        super().__init__()
        layout = _layout()
        self.layers = nn.ModuleList(Block(topology, layout) for _ in range(depth))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


@pytest.mark.parametrize("types", [("cross_attention",), ("cross_attention", "pooling", "perceiver", "gated", "mamba")])
def test_blocks_share_one_graph_and_match_eager(types):
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    conns = [Connection(src="v", dst="v", t_src=0, t_dst=0), Connection(src="v", dst="v", t_src=0, t_dst=-1)]
    conns += [Connection(src="a", dst="v", fn=fn, t_src=0, t_dst=0) for fn in types]
    net = Net(CanvasTopology(conns))
    x = torch.randn(2, 24, 16, requires_grad=True)
    want = net(x)
    (g_want,) = torch.autograd.grad(want.sum(), x)
    torch._dynamo.reset()
    counters.clear()
    blocks = compile_blocks(net, backend="aot_eager")
    assert len(blocks) == 3
    got = net(x)
    (g_got,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])  # traced once, reused twice
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert list(dict(net.named_parameters())) == list(dict(Net(CanvasTopology(conns)).named_parameters()))


def test_bad_block_attr_names_the_fix():
    net = Net(CanvasTopology([Connection(src="v", dst="v")]), depth=1)
    with pytest.raises(CanvasTypeError, match="nn.ModuleList or nn.Sequential"):
        find_blocks(net, "norm")
    with pytest.raises(CanvasTypeError, match="block_attr="):
        find_blocks(nn.Linear(2, 2))
    with pytest.raises(CanvasTypeError, match="nn.Module"):
        compile_blocks("net")
    assert find_blocks(net) == list(net.layers)
