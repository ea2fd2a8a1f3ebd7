"""The change a canvas layer makes (``delta`` / ``returns="delta"``) for residual stacks, and
``graft_looped_blocks`` taking the width of a canvas model from the model itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from canvas_core import CanvasLayout, CanvasTopology, Connection, graft_looped_blocks
from canvas_core.errors import SchemaError
from canvas_core.runtime.canvas_attention import CanvasAttention


def _layout():
    # "c" is read by nothing and updates nothing: its positions pass through
    return CanvasLayout(T=2, H=3, W=4, d_model=16, regions={
        "a": (0, 2, 0, 1, 0, 4), "b": (0, 2, 1, 2, 0, 4), "c": (0, 2, 2, 3, 0, 4)})


def _topology():
    return CanvasTopology([Connection(src="b", dst="a"), Connection(src="a", dst="a", t_src=0, t_dst=0),
                           Connection(src="b", dst="b", fn="pooling")])


def test_delta_is_the_state_change_and_exactly_zero_where_nothing_updates():
    torch.manual_seed(0)
    layout = _layout()
    layer = CanvasAttention(_topology(), layout, n_heads=2).double()
    x = torch.randn(2, layout.num_positions, 16, dtype=torch.float64)
    state, delta = layer(x), layer.delta(x)
    torch.testing.assert_close(x + delta, state)
    idle = torch.as_tensor(layout.region_indices("c"))
    assert torch.equal(delta[:, idle], torch.zeros_like(delta[:, idle]))
    assert delta.abs().sum() > 0


def test_returns_delta_makes_forward_return_the_change():
    torch.manual_seed(0)
    layout = _layout()
    state_layer = CanvasAttention(_topology(), layout, n_heads=2)
    delta_layer = CanvasAttention(_topology(), layout, n_heads=2, returns="delta")
    delta_layer.load_state_dict(state_layer.state_dict())
    x = torch.randn(1, layout.num_positions, 16)
    torch.testing.assert_close(delta_layer(x), state_layer.delta(x))
    torch.testing.assert_close(x + delta_layer(x), state_layer(x))
    with pytest.raises(SchemaError, match="returns must be 'state' or 'delta'"):
        CanvasAttention(_topology(), layout, n_heads=2, returns="residual")


class _CanvasNet(nn.Module):
    """A user's own canvas model: no config, no inner_dim attribute."""

    def __init__(self, layout):
        super().__init__()
        self.blocks = nn.ModuleList([CanvasAttention(_topology(), layout, n_heads=2, returns="delta")
                                     for _ in range(2)])

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return x


def test_graft_takes_the_width_from_the_canvas_layers():
    torch.manual_seed(0)
    layout = _layout()
    model = _CanvasNet(layout)
    x = torch.randn(1, layout.num_positions, 16)
    before = model(x)
    graft_looped_blocks(model, max_loops=2, block_attr="blocks")
    torch.testing.assert_close(model(x), before)  # identical at initialisation
