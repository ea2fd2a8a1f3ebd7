"""CogVideoX 1.5 (``patch_size_t``): latent frames that do not fill whole temporal patches are
refused with a clear error, by the adapter and by a model carrying a topology."""

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel

from canvas_core.errors import BackboneError, ShapeError
from canvas_core.looping import get_adapter, graft_looped_blocks
from canvas_core.schema import CanvasTopology

TINY = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
            time_embed_dim=8, text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8,
            sample_frames=9, patch_size=2, max_text_seq_length=6)
TINY_15 = dict(TINY, patch_size_t=2, use_rotary_positional_embeddings=True)


def make(cfg: dict) -> CogVideoXTransformer3DModel:
    torch.manual_seed(0)
    return CogVideoXTransformer3DModel(**cfg).eval()


def inputs(cfg: dict, frames: int) -> dict:
    """Model inputs with ``frames`` 8 x 8 latent frames; rotary angles for the patches the
    backbone would make of whole temporal patches."""
    g = torch.Generator().manual_seed(1)
    kw = dict(hidden_states=torch.randn(2, frames, 4, 8, 8, generator=g),
              encoder_hidden_states=torch.randn(2, 6, 16, generator=g),
              timestep=torch.tensor([5, 600]))
    if cfg.get("use_rotary_positional_embeddings"):
        ang = torch.randn(-(-frames // cfg["patch_size_t"]) * 16, 8, generator=g)
        kw["image_rotary_emb"] = (ang.cos(), ang.sin())
    return kw


def _grafted(cfg):
    m = make(cfg)
    graft_looped_blocks(m, max_loops=2)
    return m, get_adapter(m)


def test_grid_refuses_frames_not_a_multiple_of_patch_size_t():
    m, ad = _grafted(TINY_15)
    with pytest.raises(BackboneError, match=r"latent frames \(3\) must be a multiple of "
                                            r"patch_size_t 2; pad the latents to 4 frames"):
        ad.grid(m, 3, 8, 8)
    with pytest.raises(BackboneError, match=r"patch_size_t 2"):
        ad.token_layout(m, inputs(TINY_15, frames=3))
    assert ad.grid(m, 4, 8, 8) == (2, 4, 4)
    assert ad.grid(m, 6, 8, 8) == (3, 4, 4)


def test_grid_without_patch_size_t_keeps_every_frame():
    m, ad = _grafted(TINY)
    assert ad.grid(m, 3, 8, 8) == (3, 4, 4)
    with pytest.raises(BackboneError, match=r"\(7, 8\) must be multiples of patch_size 2"):
        ad.grid(m, 3, 7, 8)


def test_installed_model_refuses_odd_frames_with_shape_error():
    """The backbone itself fails on 3 frames with a bare reshape error; once a topology is
    installed the call is refused first, with the fix in the message."""
    m, ad = _grafted(TINY_15)
    kw4 = inputs(TINY_15, frames=4)
    ad.install_topology(m, CanvasTopology.dense(["video", "text"]), ad.token_layout(m, kw4))
    with torch.no_grad(), pytest.raises(ShapeError, match=r"latent frames \(3\) must be a multiple"):
        m(**inputs(TINY_15, frames=3))
    with torch.no_grad():
        assert m(**kw4).sample.shape == kw4["hidden_states"].shape
