"""Bad inputs of the semantic conditioner and of a canvas given one (found by a hostile sweep):
each is refused with a CanvasError naming the object and the fix, never ignored silently."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import canvas_core as cc
from canvas_core.errors import CanvasTypeError, SchemaError, ShapeError
from canvas_core.runtime.semantic_conditioner import SemanticConditioner

LAYOUT = cc.CanvasLayout(T=1, H=2, W=2, d_model=8, regions={"a": (0, 1, 0, 1, 0, 2), "b": (0, 1, 1, 2, 0, 2)})


def test_region_names_must_be_strings_and_embeddings_flat():
    with pytest.raises(CanvasTypeError, match=r"keys must be region names \(str\), got 1"):
        SemanticConditioner(8, 4, {1: [1, 2, 3, 4], "a": [1, 2, 3, 4]})
    with pytest.raises(SchemaError, match=r"region 'a' has shape \(2, 2\); give one flat vector"):
        SemanticConditioner(8, 4, {"a": [[1, 2], [3, 4]]})
    one_row = SemanticConditioner(8, 4, {"a": [[1, 2, 3, 4]]})  # an embedder's (1, E) output is one vector
    flat = SemanticConditioner(8, 4, {"a": [1, 2, 3, 4]})
    assert torch.equal(one_row._embeddings, flat._embeddings)


def test_condition_canvas_names_a_canvas_or_layout_of_the_wrong_kind():
    cond = SemanticConditioner(8, 4, {"a": [1, 2, 3, 4]})
    with pytest.raises(CanvasTypeError, match="canvas must be a .* tensor, got list"):
        cond.condition_canvas([[0.0]], LAYOUT)
    with pytest.raises(CanvasTypeError, match="layout must be the CanvasLayout"):
        cond.condition_canvas(torch.zeros(1, 4, 8), None)


def test_a_state_of_another_shape_is_refused_naming_the_options():
    saved = SemanticConditioner(8, 4, {"a": [1, 2, 3, 4]}, projector_bias=True).state_dict()
    target = SemanticConditioner(8, 4, {"a": [1, 2, 3, 4]})
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(SchemaError, match="projector_bias") as info:
        target.load_state_dict(saved)
    assert "projector.bias" in str(info.value)
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())


def test_a_canvas_refuses_a_conditioner_it_would_ignore_or_of_another_width():
    class OnlyGet(nn.Module):  # no region_names: no region would ever be conditioned
        def get_conditioning(self, name):
            return torch.full((8,), 100.0)

    with pytest.raises(CanvasTypeError, match="region_names"):
        cc.SpatiotemporalCanvas(LAYOUT, semantic_conditioner=OnlyGet())
    with pytest.raises(ShapeError, match="d_model=16, the layout has d_model=8"):
        cc.SpatiotemporalCanvas(LAYOUT, semantic_conditioner=SemanticConditioner(16, 4, {"a": [1, 2, 3, 4]}))
    canvas = cc.SpatiotemporalCanvas(LAYOUT, semantic_conditioner=SemanticConditioner(8, 4, {"a": [1, 2, 3, 4]}))
    assert canvas.semantic_conditioner is not None
