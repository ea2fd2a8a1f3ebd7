"""A module built from a CanvasLayout refuses to run once the layout's regions or geometry have
changed (the indices and tables it copied out describe the old layout); ``t_current``, which moves
no index, is not a change of theirs."""

from __future__ import annotations

import pytest
import torch

from canvas_core import AttentionDispatcher, CanvasLayout, CanvasTopology, Connection, SpatiotemporalCanvas
from canvas_core.errors import SchemaError
from canvas_core.runtime.canvas_attention import CanvasAttention
from canvas_core.schema.region import RegionSpec

torch.set_num_threads(1)


def _layout() -> CanvasLayout:
    return CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})


TOPO = CanvasTopology(connections=[Connection("a", "b"), Connection("b", "a")])


@pytest.mark.parametrize("cls", [CanvasAttention, AttentionDispatcher])
def test_an_attention_layer_refuses_a_layout_changed_after_it_was_built(cls):
    layout = _layout()
    layer = cls(TOPO, layout, d_model=8, n_heads=2)
    x = torch.randn(1, 8, 8)
    before = layer(x)
    layout.regions["a"] = RegionSpec((0, 2, 0, 1, 0, 1))  # a smaller region: other indices
    with pytest.raises(SchemaError, match=rf"{cls.__name__} was built from this CanvasLayout before it was changed"):
        layer(x)
    assert cls(TOPO, layout, d_model=8, n_heads=2)(x).shape == before.shape  # built again: runs


def test_a_canvas_refuses_a_layout_changed_after_it_was_built():
    layout = _layout()
    canvas = SpatiotemporalCanvas(layout)
    c = canvas.create_empty(1)
    layout.regions["c"] = RegionSpec((0, 1, 0, 1, 0, 1))
    with pytest.raises(SchemaError, match="SpatiotemporalCanvas was built from this CanvasLayout"):
        canvas.create_empty(1)
    with pytest.raises(SchemaError, match="build the SpatiotemporalCanvas again"):
        canvas.place(c, torch.zeros(1, 4, 8), "a")


def test_moving_t_current_is_not_a_change_of_the_modules_layout():
    layout = _layout()
    layer, canvas = CanvasAttention(TOPO, layout, d_model=8, n_heads=2), SpatiotemporalCanvas(layout)
    layout.t_current = 1
    layer(canvas.create_empty(2))
