"""ViT ``token_layout`` with image sizes and inputs the model cannot take.

Before: ``{"pixel_values": images}`` silently gave the configured grid (not the images'), and an
image size the patch embedding refuses (a strict model, or a size that is not whole patches)
gave a layout that installed, then failed at the forward with timm's bare ``AssertionError``.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from canvas_core.errors import BackboneError, CanvasError
from canvas_core.looping import get_adapter, graft_looped_blocks

TINY = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2, num_classes=5)


def grafted(**over):
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**TINY, **over}).eval()
    graft_looped_blocks(m, max_loops=2)
    return m, get_adapter(m)


def test_a_mapping_without_x_is_refused_not_read_as_the_default_grid():
    m, ad = grafted(dynamic_img_size=True)
    with pytest.raises(BackboneError, match=r"sample_inputs\['x'\].*pixel_values"):
        ad.token_layout(m, {"pixel_values": torch.randn(1, 3, 48, 48)})
    assert ad.token_layout(m, {"x": torch.randn(1, 3, 48, 48)}).info["grid"] == (6, 6)
    assert ad.token_layout(m, {}).info["grid"] == (4, 4)  # nothing given: the configured size


def test_strict_model_refuses_another_image_size_naming_the_fix():
    m, ad = grafted()
    with pytest.raises(BackboneError, match="48x48.*32x32.*dynamic_img_size=True"):
        ad.token_layout(m, torch.randn(1, 3, 48, 48))
    assert ad.token_layout(m, torch.randn(1, 3, 32, 32)).info["grid"] == (4, 4)


def test_dynamic_model_refuses_partial_patches_unless_it_pads():
    m, ad = grafted(dynamic_img_size=True)
    with pytest.raises(BackboneError, match="30x34.*8x8 patches.*dynamic_img_pad=True"):
        ad.token_layout(m, {"x": torch.randn(2, 3, 30, 34)})
    with pytest.raises(AssertionError):  # what the model itself says for that size
        m(torch.randn(2, 3, 30, 34))

    m, ad = grafted(dynamic_img_size=True, dynamic_img_pad=True)
    x = torch.randn(2, 3, 30, 34)
    tokens = ad.token_layout(m, {"x": x})
    assert tokens.info["grid"] == (4, 5)  # padded up to whole patches, as timm does
    from canvas_core.schema import CanvasTopology

    with torch.no_grad():
        ref = m(x)
        ad.install_topology(m, CanvasTopology.dense(list(tokens.layout.regions)), tokens)
        torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-6)


def test_shapes_given_as_ints_numpy_ints_or_garbage():
    m, ad = grafted(dynamic_img_size=True)
    assert ad.token_layout(m, (1, 3, 40, 24)).info["grid"] == (5, 3)
    assert ad.token_layout(m, tuple(np.int64(i) for i in (1, 3, 40, 24))).info["grid"] == (5, 3)
    with pytest.raises(CanvasError, match=r"\(B, C, H, W\)"):
        ad.token_layout(m, (1, 3, 40.0, 24))


def test_patch_dropout_in_train_mode_is_refused_naming_it_not_a_token_layout_to_rebuild():
    # before: ShapeError "installed for 17 attention tokens but this call has 9; rebuild
    # adapter.token_layout(...)", which cannot help: the dropped patches differ per sample
    from canvas_core.schema import CanvasTopology, Connection

    m, ad = grafted(patch_drop_rate=0.5)
    x = torch.randn(2, 3, 32, 32)
    top = CanvasTopology(connections=[Connection("patches", "patches"), Connection("cls", "cls"),
                                      Connection("patches", "cls")])
    ad.install_topology(m, top, ad.token_layout(m))
    assert m(x).shape == (2, 5)  # eval: patch dropout does nothing
    m.train()
    with pytest.raises(BackboneError, match=r"patch dropout \(prob=0.5\).*patch_drop.prob = 0"):
        m(x)
    m.patch_drop.prob = 0.0
    assert m(x).shape == (2, 5)
    m.patch_drop.prob = 0.5
    ad.remove_topology(m)
    assert not m.patch_drop._forward_pre_hooks
    assert m(x).shape == (2, 5)  # the backbone's own behaviour again


def test_a_hybrid_vit_takes_the_sizes_timm_takes():
    """timm's HybridEmbed (a ResNet stem, then patches of its feature map) asserts no image size:
    the PatchEmbed rules are not applied to it."""
    import timm

    from canvas_plugin_vit.adapter import ViTAdapter

    m = timm.create_model("vit_tiny_r_s16_p8_224", img_size=64, depth=1, num_classes=2, dynamic_img_size=True).eval()
    for side in (64, 68, 100):
        x = torch.zeros(1, 3, side, side)
        tl = ViTAdapter().token_layout(m, {"x": x})
        with torch.no_grad():
            patches = m.forward_features(x).shape[1] - m.num_prefix_tokens
        gh, gw = tl.info["grid"]
        assert gh * gw == patches, side
