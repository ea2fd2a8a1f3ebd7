"""Reliability: bad inputs to the canvit / mamba / cogvideox / mochi / vit plugin packages (the identity
binders' part of this audit is tests/identity/test_bad_inputs.py)."""

from __future__ import annotations

import pytest
import torch

from canvas_core.errors import BackboneError, CanvasTypeError, ShapeError

canvit = pytest.importorskip("canvas_plugin_canvit")


@pytest.mark.parametrize("kw, match", [
    ({"mlp_ratio": -1.0}, "mlp_ratio"), ({"mlp_ratio": "2"}, "mlp_ratio"), ({"mlp_ratio": 0}, "mlp_ratio"),
    ({"rope_max_freq": 0}, "rope_max_freq"), ({"rope_max_freq": float("nan")}, "rope_max_freq"),
    ({"write_gate": "yes"}, "write_gate"),
])
def test_canvit_core_constructor(kw, match):
    from canvas_plugin_canvit.model import CanViTCore

    with pytest.raises(CanvasTypeError, match=match):
        CanViTCore(**kw)


def test_canvit_core_forward_bad_inputs():
    from canvas_plugin_canvit.model import CanvasState, CanViTCore
    from canvas_plugin_canvit.viewpoint import Viewpoint

    m = CanViTCore(d_model=16, n_heads=2, depth=1, patch_size=4)
    st, vp, g = m.init_state(2, 4), Viewpoint.full_scene(2), torch.randn(2, 3, 8, 8)
    with pytest.raises(CanvasTypeError, match="glimpse must be a torch.Tensor"):
        m([1], st, vp)
    with pytest.raises(ShapeError, match="dtype"):
        m(g.double(), st, vp)
    with pytest.raises(ShapeError, match="floating"):
        m(g.long(), st, vp)
    with pytest.raises(ShapeError, match="recurrent_cls"):
        m(g, CanvasState(torch.randn(2, 16, 16), torch.randn(2, 2, 16)), vp)
    with pytest.raises(ShapeError, match="batch"):
        m(g, CanvasState(torch.randn(2, 16, 16), torch.randn(3, 1, 16)), vp)
    with pytest.raises(ShapeError, match="3-d tensor"):
        m(g, CanvasState([1], torch.randn(2, 1, 16)), vp)
    assert m(g, st, vp).state.canvas.shape == (2, 16, 16)


def test_canvit_viewpoint_and_rope():
    from canvas_plugin_canvit.rope import SceneRoPE
    from canvas_plugin_canvit.viewpoint import Viewpoint

    with pytest.raises(CanvasTypeError, match="batch_size"):
        Viewpoint.full_scene(-1)
    with pytest.raises(ShapeError, match="floating"):
        Viewpoint(torch.zeros(2, 2, dtype=torch.long), torch.ones(2, dtype=torch.long))
    for bad in (0, -4, "8"):
        with pytest.raises(CanvasTypeError, match="head_dim"):
            SceneRoPE(bad)
    with pytest.raises(CanvasTypeError, match="max_freq"):
        SceneRoPE(8, max_freq=0)
    r = SceneRoPE(8)
    with pytest.raises(ShapeError, match="coords"):
        r(torch.randn(2, 2, 5, 8), torch.randn(2, 4, 2))
    with pytest.raises(ShapeError, match=r"x must be \(B, H, N, 8\)"):
        r(torch.randn(2, 5, 8), torch.randn(2, 5, 2))
    assert r(torch.randn(2, 2, 5, 8), torch.randn(1, 5, 2)).shape == (2, 2, 5, 8)


def test_mamba_bad_mask_and_dtypes():
    pytest.importorskip("canvas_plugin_mamba")
    from canvas_plugin_mamba.module import MambaAttention

    m = MambaAttention(d_model=8, n_heads=2)
    q, k = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    with pytest.raises(CanvasTypeError, match="key_mask must be a torch.Tensor"):
        m(q, k, k, key_mask=[[True] * 4] * 3)
    with pytest.raises(ShapeError, match="key_mask is on meta"):
        m(q, k, k, key_mask=torch.ones(2, 3, 4, dtype=torch.bool, device="meta"))
    with pytest.raises(ShapeError, match="module's parameters"):
        m(q.double(), k.double(), k.double())


@pytest.mark.parametrize("mod, cls", [("canvas_plugin_cogvideox.adapter", "CanvasCogVideoXAttnProcessor"),
                                      ("canvas_plugin_mochi.adapter", "CanvasMochiAttnProcessor")])
def test_attention_processors_need_the_original(mod, cls):
    module = pytest.importorskip(mod)
    with pytest.raises(BackboneError, match="original"):
        getattr(module, cls)(3)


@pytest.mark.parametrize("mod, cls", [("canvas_plugin_vit.adapter", "ViTAdapter"),
                                      ("canvas_plugin_mochi.adapter", "MochiAdapter")])
def test_graft_with_the_wrong_backbone_adapter(mod, cls):
    from torch import nn

    from canvas_core.looping import graft_looped_blocks

    module = pytest.importorskip(mod)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(8, 8)])
            self.transformer_blocks = self.blocks

    m = M()
    first = m.blocks[0]
    with pytest.raises(BackboneError, match="cannot read the structure of M"):
        graft_looped_blocks(m, adapter=getattr(module, cls)())
    assert m.blocks[0] is first
