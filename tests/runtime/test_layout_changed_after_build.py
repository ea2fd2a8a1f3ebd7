"""A module built from a CanvasLayout refuses to run once the layout's regions or geometry have
changed (the indices and tables it copied out describe the old layout), in a forward and in a
rollout step; ``t_current``, which moves no index, is not a change of theirs, nor is a change
undone before the module runs again."""

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
    layout.regions["a"] = RegionSpec((0, 2, 0, 1, 0, 2))  # changed back: the geometry it was built from
    assert torch.equal(layer(x), before)


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


def test_a_rollout_refuses_a_layout_changed_after_its_layers_were_built():
    import canvas_core

    layout = _layout()
    causal = CanvasTopology(connections=[Connection("a", "b", t_src=0, t_dst=0), Connection("b", "a", t_src=0, t_dst=0)])
    model = torch.nn.Sequential(CanvasAttention(causal, layout, d_model=8, n_heads=2)).eval()
    frame = torch.randn(1, 4, 8)
    with torch.no_grad(), canvas_core.incremental(model, layout) as roll:
        roll.step(frame)
        layout.regions["a"] = RegionSpec((0, 2, 0, 1, 0, 1))
        with pytest.raises(SchemaError, match="CanvasAttention was built from this CanvasLayout"):
            roll.step(frame)
    with pytest.raises(SchemaError, match="CanvasAttention was built from this CanvasLayout"):
        canvas_core.incremental(model, layout)


def test_moving_t_current_does_not_check_the_regions_again(monkeypatch):
    layout = _layout()
    layer = CanvasAttention(TOPO, layout, d_model=8, n_heads=2)
    calls = []
    real = CanvasLayout._revalidate
    monkeypatch.setattr(CanvasLayout, "_revalidate", lambda self: calls.append(1) or real(self))
    x = torch.randn(1, 8, 8)
    for t in (1, 2, 0):
        layout.t_current = t
        layer(x)
    assert calls == []
    layout.t_current = 5  # still range-checked
    with pytest.raises(SchemaError, match="t_current=5 must lie in"):
        layer(x)


def test_a_layer_pickled_before_it_recorded_its_layout_still_runs():
    layer = CanvasAttention(TOPO, _layout(), d_model=8, n_heads=2)
    del layer.__dict__["_layout_stamp"]  # what an object saved by an older version lacks
    layer(torch.randn(1, 8, 8))


def test_d_model_changed_and_changed_back_is_not_a_change():
    layout = _layout()
    canvas = SpatiotemporalCanvas(layout)
    layout.d_model = 16
    with pytest.raises(SchemaError, match="SpatiotemporalCanvas was built from this CanvasLayout"):
        canvas.create_empty(1)
    layout.d_model = 8
    assert canvas.create_empty(1).shape == (1, 8, 8)
