"""A viewpoint must fit the tensors it places: batch B or 1 (a batch-1 viewpoint is one window
shared by every item), and values to copy to their device (a CPU viewpoint is moved to a GPU
glimpse's device, as ``Viewpoint.full_scene(B)`` is made on the CPU; a ``meta`` one is refused)."""

from __future__ import annotations

import pytest
import torch

from canvas_core.errors import CanvasError, ShapeError
from canvas_plugin_canvit import CanViTCore, Viewpoint, sample_at_viewpoint
from canvas_plugin_canvit.attention import CanvasReadAttention, CanvasWriteAttention


def _model() -> CanViTCore:
    torch.manual_seed(0)
    return CanViTCore(d_model=16, n_heads=2, depth=1, patch_size=4).eval()


def test_core_refuses_a_viewpoint_on_another_device():
    m = _model()
    with pytest.raises(ShapeError, match=r"viewpoint is on meta.*viewpoint\.to\('cpu'\)"):
        m(torch.randn(2, 3, 8, 8), m.init_state(2, 4), Viewpoint.full_scene(2, device="meta"))


def test_core_broadcasts_a_batch_one_viewpoint():
    m = _model()
    g, st = torch.randn(3, 3, 8, 8), m.init_state(3, 4)
    vp = Viewpoint(torch.tensor([[0.25, -0.5]]), torch.tensor([0.5]))
    out = m(g, st, vp)
    ref = m(g, st, Viewpoint(vp.centers.expand(3, 2), vp.scales.expand(3)))
    torch.testing.assert_close(out.local_patches, ref.local_patches)
    torch.testing.assert_close(out.state.canvas, ref.state.canvas)
    torch.testing.assert_close(out.state.recurrent_cls, ref.state.recurrent_cls)


def test_core_refuses_a_viewpoint_of_another_batch():
    m = _model()
    with pytest.raises(ShapeError, match="viewpoint has batch size 2.*batch size 3"):
        m(torch.randn(3, 3, 8, 8), m.init_state(3, 4), Viewpoint.full_scene(2))


@pytest.mark.parametrize("cls", [CanvasReadAttention, CanvasWriteAttention])
def test_attention_refuses_a_set_viewpoint_on_another_device(cls):
    a = cls(16, 2)
    a.set_viewpoint(Viewpoint.full_scene(1, device="meta"))
    x, c = torch.randn(2, 4, 16), torch.randn(2, 9, 16)
    q, kv = (x, c) if cls is CanvasReadAttention else (c, x)
    with pytest.raises(CanvasError, match="set_viewpoint.*on meta.*viewpoint.to"):
        a(q, kv, kv)


@pytest.mark.parametrize("name", ["q_coords", "k_coords"])
def test_attention_refuses_coords_on_another_device(name):
    a = CanvasReadAttention(16, 2)
    n = 4 if name == "q_coords" else 9
    with pytest.raises(ShapeError, match=f"{name} is on meta"):
        a(torch.randn(2, 4, 16), torch.randn(2, 9, 16), torch.randn(2, 9, 16),
          **{name: torch.zeros(1, n, 2, device="meta")})


def test_sample_broadcasts_a_batch_one_viewpoint_and_checks_its_device():
    img = torch.randn(3, 2, 8, 8)
    vp = Viewpoint(torch.tensor([[-0.5, 0.5]]), torch.tensor([0.5]))
    got = sample_at_viewpoint(img, vp, 4)
    torch.testing.assert_close(got, img[:, :, 0:4, 4:8])
    with pytest.raises(ShapeError, match="viewpoint is on meta, spatial on cpu"):
        sample_at_viewpoint(img, Viewpoint.full_scene(3, device="meta"), 4)
    with pytest.raises(ShapeError, match="batch size 2.*batch size 3"):
        sample_at_viewpoint(img, Viewpoint.full_scene(2), 4)


def test_sizes_over_the_element_limit_are_refused_before_allocating():
    from canvas_core.errors import SizeLimitError

    m = _model()
    with pytest.raises(SizeLimitError, match="init_state canvas"):
        m.init_state(1, 10**6)
    with pytest.raises(SizeLimitError, match="sample_at_viewpoint glimpse"):
        sample_at_viewpoint(torch.randn(1, 1, 4, 4), Viewpoint.full_scene(1), 10**6)


def test_shifted_refuses_a_delta_on_another_device():
    with pytest.raises(ShapeError, match="delta is on meta.*delta.to"):
        Viewpoint.full_scene(2).shifted(torch.zeros(2, device="meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: a CPU viewpoint placed on a GPU glimpse")
def test_a_cpu_viewpoint_is_moved_to_a_gpu_glimpse():
    m = _model().cuda()
    g = torch.randn(2, 3, 8, 8, device="cuda")
    a = m(g, m.init_state(2, 4), Viewpoint.full_scene(2))
    b = m(g, m.init_state(2, 4), Viewpoint.full_scene(2, device="cuda"))
    assert torch.equal(a.state.canvas, b.state.canvas)


def test_a_cpu_viewpoint_samples_a_meta_image():
    """A CPU viewpoint can be copied to any device, ``meta`` included (only a meta viewpoint, which
    holds no values, is refused)."""
    out = sample_at_viewpoint(torch.empty(2, 3, 16, 16, device="meta"), Viewpoint.full_scene(2), 4)
    assert out.device.type == "meta" and out.shape == (2, 3, 4, 4)
