"""CanViT argument refusals: canvas_write gate, Viewpoint values, non-float images, non-square
glimpses (hostile-sweep regressions)."""

from __future__ import annotations

import pytest
import torch

from canvas_core.errors import CanvasError, CanvasTypeError, ShapeError
from canvas_core.plugins import create_attention
from canvas_plugin_canvit import CanViTCore, Viewpoint, sample_at_viewpoint
from canvas_plugin_canvit.attention import CanvasWriteAttention


@pytest.mark.parametrize("gate", ["no", "yes", 1, 0, None, 1.0])
def test_write_gate_must_be_a_bool(gate):
    with pytest.raises(CanvasTypeError, match="gate must be a bool") as exc:
        create_attention("canvas_write", d_model=16, n_heads=2, gate=gate)
    assert "canvas_write" in str(exc.value) and "gate=False" in str(exc.value)
    with pytest.raises(CanvasTypeError, match="gate"):
        CanvasWriteAttention(16, 2, gate=gate)


@pytest.mark.parametrize("gate", [True, False])
def test_write_gate_bool_is_accepted(gate):
    w = create_attention("canvas_write", d_model=16, n_heads=2, gate=gate)
    assert (w.gate_logit is not None) is gate


@pytest.mark.parametrize("centers, scales, what", [
    ([[0.0, 0.0]], [0.0], "scales"),
    ([[0.0, 0.0]], [-1.0], "scales"),
    ([[0.0, 0.0], [0.0, 0.0]], [1.0, float("nan")], "scales"),
    ([[0.0, 0.0]], [float("inf")], "scales"),
    ([[float("nan"), 0.0]], [1.0], "centers"),
    ([[0.0, 0.0], [0.0, float("-inf")]], [1.0, 1.0], "centers"),
])
def test_viewpoint_refuses_bad_values(centers, scales, what):
    with pytest.raises(CanvasError, match=what) as exc:
        Viewpoint(centers=torch.tensor(centers), scales=torch.tensor(scales))
    assert "Viewpoint" in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_viewpoint_shifted_by_nan_is_refused():
    with pytest.raises(CanvasError, match="centers"):
        Viewpoint.full_scene(2).shifted(torch.tensor([float("nan"), 0.0]))


def test_viewpoint_good_values_and_empty_batch_pass():
    Viewpoint(centers=torch.tensor([[-0.5, 0.5]]), scales=torch.tensor([0.25]))
    Viewpoint.full_scene(0)
    Viewpoint(centers=torch.zeros(1, 2, device="meta"), scales=torch.ones(1, device="meta"))


def test_viewpoint_check_is_skipped_under_compile():
    def f(c, s):
        return Viewpoint(c, s).scales * 2

    out = torch.compile(f, backend="eager", fullgraph=True)(torch.zeros(2, 2), torch.ones(2))
    assert torch.equal(out, torch.full((2,), 2.0))


@pytest.mark.parametrize("dtype", [torch.long, torch.uint8, torch.bool])
def test_sample_at_viewpoint_blames_a_non_float_image(dtype):
    img = torch.zeros(2, 3, 8, 8, dtype=dtype)
    with pytest.raises(ShapeError, match="spatial") as exc:
        sample_at_viewpoint(img, Viewpoint.full_scene(2), glimpse_size_px=4)
    assert "spatial.float()" in str(exc.value) and "Viewpoint:" not in str(exc.value)


@pytest.mark.parametrize("hw", [(8, 16), (16, 8), (4, 12)])
def test_non_square_glimpse_is_refused(hw):
    torch.manual_seed(0)
    m = CanViTCore(d_model=16, canvas_dim=24, n_heads=2, depth=1, patch_size=4)
    st = m.init_state(batch_size=2, canvas_grid_size=4)
    with pytest.raises(ShapeError, match="glimpse") as exc:
        m(torch.randn(2, 3, *hw), st, Viewpoint.full_scene(2))
    assert str(tuple((2, 3) + hw)) in str(exc.value)
    m(torch.randn(2, 3, 8, 8), st, Viewpoint.full_scene(2))  # square still fine
