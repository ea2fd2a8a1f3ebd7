"""One rule for the dtype of scene coordinates (``rope.coord_dtype``: float32, or float64 for a
float64 tensor), read by the attention, the model and the RoPE alike; and one batch check for a
viewpoint set on an attention layer (``check_viewpoint_for``'s, which an older copy hid)."""

from __future__ import annotations

import pytest
import torch

from canvas_core.errors import ShapeError
from canvas_plugin_canvit import Viewpoint
from canvas_plugin_canvit import attention, model, rope
from canvas_plugin_canvit.attention import CanvasReadAttention


def test_one_coordinate_dtype_rule():
    assert not hasattr(attention, "_coord_dtype")
    assert attention.coord_dtype is rope.coord_dtype and model.coord_dtype is rope.coord_dtype
    f32, f64, bf16 = (torch.zeros(1, dtype=d) for d in (torch.float32, torch.float64, torch.bfloat16))
    assert rope.coord_dtype(bf16) == torch.float32  # never below float32
    assert rope.coord_dtype(bf16, f64) == torch.float64
    assert rope.coord_dtype(f32) == torch.float32


def test_set_viewpoint_of_another_batch_is_refused_by_the_shared_check():
    torch.manual_seed(0)
    a = CanvasReadAttention(16, 2)
    a.set_viewpoint(Viewpoint.full_scene(2))
    x, c = torch.randn(3, 4, 16), torch.randn(3, 9, 16)
    with pytest.raises(ShapeError, match=r"canvas_read \(viewpoint from set_viewpoint\(\)\): the "
                                         r"viewpoint has batch size 2 but the local tokens has batch size 3; "
                                         r"pass a viewpoint of batch 3, or of batch 1"):
        a(x, c, c)
    a.set_viewpoint(Viewpoint.full_scene(1))  # one window shared by every item
    assert a(x, c, c).shape == (3, 4, 16)
