"""Glimpse sampling, the recurrent CanViT core: constant cost per step, export, training."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from canvas_core.errors import CanvasError
from canvas_plugin_canvit import CanViTCore, CanvasState, Viewpoint, sample_at_viewpoint


def test_full_scene_and_quadrant_glimpses_are_exact_crops():
    img = torch.randn(2, 3, 16, 16)
    full = Viewpoint.full_scene(2)
    torch.testing.assert_close(sample_at_viewpoint(img, full, 16), img)
    # (y, x) = (-0.5, +0.5), half the side: the top-right quadrant
    vp = Viewpoint(torch.tensor([[-0.5, 0.5], [0.5, -0.5]]), torch.tensor([0.5, 0.5]))
    g = sample_at_viewpoint(img, vp, 8)
    torch.testing.assert_close(g[0], img[0, :, :8, 8:])
    torch.testing.assert_close(g[1], img[1, :, 8:, :8])
    with pytest.raises(CanvasError):
        sample_at_viewpoint(img[0], full, 8)
    with pytest.raises(CanvasError):
        sample_at_viewpoint(img, Viewpoint.full_scene(3), 8)


def _model():
    torch.manual_seed(0)
    return CanViTCore(d_model=32, canvas_dim=48, n_heads=4, depth=2, patch_size=4, in_chans=3)


def _random_vp(B, g):
    return Viewpoint(torch.rand(B, 2, generator=g) - 0.5, 0.25 + 0.75 * torch.rand(B, generator=g))


def test_cost_per_step_is_constant_in_the_number_of_past_glimpses():
    model = _model().eval()
    img = torch.randn(2, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    state = model.init_state(batch_size=2, canvas_grid_size=8)
    shapes0 = [tuple(t.shape) for t in (state.canvas, state.recurrent_cls)]
    flops = []
    with torch.no_grad():
        for _ in range(6):
            vp = _random_vp(2, g)
            counter = FlopCounterMode(display=False)
            with counter:
                out = model(sample_at_viewpoint(img, vp, 16), state, vp)
            flops.append(counter.get_total_flops())
            state = out.state
            assert [tuple(t.shape) for t in (state.canvas, state.recurrent_cls)] == shapes0
            assert out.local_patches.shape == (2, 16, 32)
    assert flops[0] > 0 and len(set(flops)) == 1, flops
    # the canvas does change from glimpse to glimpse (the state is really carried)
    assert not torch.allclose(state.canvas, model.init_state(2, 8).canvas)


def test_same_weights_serve_other_canvas_and_glimpse_sizes():
    model = _model()
    for grid, glimpse in ((4, 8), (16, 32)):
        st = model.init_state(1, grid)
        vp = Viewpoint.full_scene(1)
        out = model(sample_at_viewpoint(torch.randn(1, 3, 32, 32), vp, glimpse), st, vp)
        assert out.state.canvas.shape == (1, grid * grid, 48)


def test_exportable_with_torch_export():
    model = _model().eval()
    state = model.init_state(2, 8)
    vp = _random_vp(2, torch.Generator().manual_seed(3))
    glimpse = torch.randn(2, 3, 16, 16)
    ep = torch.export.export(model, (glimpse, state, vp))
    with torch.no_grad():
        ref = model(glimpse, state, vp)
        got = ep.module()(glimpse, state, vp)
    torch.testing.assert_close(got.state.canvas, ref.state.canvas)
    torch.testing.assert_close(got.local_patches, ref.local_patches)
    assert isinstance(got.state, CanvasState)


def test_trains_end_to_end_through_several_glimpses():
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    img = torch.randn(2, 3, 32, 32)
    target = torch.randn(2, 16, 48)
    g = torch.Generator().manual_seed(4)
    losses = []
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add contention
    try:
        _train(model, opt, img, target, g, losses)
    finally:
        torch.set_num_threads(n_threads)
    assert losses[-1] < 0.9 * losses[0], losses


def _train(model, opt, img, target, g, losses):
    for _ in range(10):
        state = model.init_state(2, 4)
        for _ in range(3):
            vp = _random_vp(2, g)
            state = model(sample_at_viewpoint(img, vp, 16), state, vp).state
        loss = (model.get_spatial(state.canvas) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())


@pytest.mark.parametrize("call", [
    lambda m: m.init_state(0, 4),
    lambda m: m(torch.randn(1, 3, 16, 16), "state", Viewpoint.full_scene(1)),
    lambda m: m(torch.randn(1, 3, 15, 15), m.init_state(1, 4), Viewpoint.full_scene(1)),
    lambda m: m(torch.randn(2, 3, 16, 16), m.init_state(1, 4), Viewpoint.full_scene(2)),
    lambda m: CanViTCore(d_model=30, n_heads=4),
])
def test_bad_inputs(call):
    with pytest.raises(CanvasError):
        call(_model())
