"""Input checks of a grafted CogVideoX, declared once by ``CogVideoXAdapter.input_guards`` and
attached by the base adapter at graft, install, removal and ungraft.

* Without a topology, latents the backbone cannot patch (CogVideoX 1.5 frames not a multiple of
  ``patch_size_t``, height/width not whole patches there, an empty batch) used to reach
  diffusers' bare reshape errors; the grafted model now refuses them with ``ShapeError``.
* With a topology, CogVideoX 1.0 latents whose height/width are not whole patches used to run
  silently (diffusers drops the last row, the token layout does not describe the call).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel

from canvas_core import ungraft_looped_blocks
from canvas_core.errors import BackboneError, ShapeError
from canvas_core.looping import get_adapter, graft_looped_blocks
from canvas_core.schema import CanvasTopology
from canvas_core.testing import one_thread_fixture

TINY = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
            time_embed_dim=8, text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8,
            sample_frames=9, patch_size=2, max_text_seq_length=6)
TINY_15 = dict(TINY, patch_size_t=2, use_rotary_positional_embeddings=True)
DENSE = CanvasTopology.dense(["video", "text"])


_one_thread = one_thread_fixture()



def _guards(module):
    """The forward pre-hooks on ``module`` other than the graft's forward mark (``ForwardStart``)."""
    return [h for h in module._forward_pre_hooks.values() if type(h).__name__ != "ForwardStart"]

def _grafted(cfg: dict):
    torch.manual_seed(0)
    m = CogVideoXTransformer3DModel(**cfg).eval()
    graft_looped_blocks(m, max_loops=2)
    return m, get_adapter(m)


def _inputs(cfg: dict, frames: int, h: int = 8, w: int = 8, batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    kw = dict(hidden_states=torch.randn(batch, frames, 4, h, w, generator=g),
              encoder_hidden_states=torch.randn(batch, 6, 16, generator=g),
              timestep=torch.tensor([5, 600][:batch]))
    if cfg.get("use_rotary_positional_embeddings"):
        ang = torch.randn(-(-frames // cfg["patch_size_t"]) * (h // 2) * (w // 2), 8, generator=g)
        kw["image_rotary_emb"] = (ang.cos(), ang.sin())
    return kw


def test_grafted_15_without_topology_refuses_odd_frames_with_the_fix():
    m, _ = _grafted(TINY_15)
    with torch.no_grad(), pytest.raises(ShapeError, match=r"latent frames \(3\) must be a multiple of "
                                                          r"patch_size_t 2; pad the latents to 4 frames"):
        m(**_inputs(TINY_15, 3))
    with torch.no_grad():
        assert m(**_inputs(TINY_15, 4)).sample.shape == (2, 4, 4, 8, 8)


def test_grafted_15_without_topology_refuses_partial_patches():
    m, _ = _grafted(TINY_15)
    with torch.no_grad(), pytest.raises(ShapeError, match=r"height/width \(9, 8\).*multiples of patch_size 2.*"
                                                          r"\(10, 8\) or \(8, 8\)"):
        m(**_inputs(TINY_15, 4, h=9))


def test_topology_refuses_partial_patches_that_diffusers_drops():
    m, ad = _grafted(TINY)
    kw = _inputs(TINY, 2)
    with torch.no_grad():  # no topology: the backbone's own behaviour (the last row dropped)
        assert m(**_inputs(TINY, 2, w=9)).sample.shape == (2, 2, 4, 8, 8)
    ad.install_topology(m, DENSE, ad.token_layout(m, kw))
    for h, w in ((9, 8), (8, 9)):
        with torch.no_grad(), pytest.raises(ShapeError, match=rf"height/width \({h}, {w}\).*patch_size 2"):
            m(**_inputs(TINY, 2, h=h, w=w))
    with torch.no_grad():
        assert torch.isfinite(m(**kw).sample).all()


@pytest.mark.parametrize("installed", [False, True])
def test_empty_batch_is_refused(installed):
    m, ad = _grafted(TINY)
    if installed:
        ad.install_topology(m, DENSE, ad.token_layout(m, _inputs(TINY, 2)))
    with torch.no_grad(), pytest.raises(ShapeError, match=r"empty batch \(0 samples\)"):
        m(**_inputs(TINY, 2, batch=0))
    with torch.no_grad():
        assert m(**_inputs(TINY, 2, batch=1)).sample.shape == (1, 2, 4, 8, 8)


def test_guards_follow_install_remove_and_ungraft():
    m, ad = _grafted(TINY_15)
    kw = _inputs(TINY_15, 4)
    tokens = ad.token_layout(m, kw)
    for _ in range(2):  # installed twice: one hook per module
        ad.install_topology(m, DENSE, tokens)
    assert len(m.patch_embed._forward_pre_hooks) == 1 and len(_guards(m)) == 1
    ad.remove_topology(m)
    assert not m.patch_embed._forward_pre_hooks  # the token layout's check is gone ...
    with torch.no_grad(), pytest.raises(ShapeError, match="patch_size_t 2"):
        m(**_inputs(TINY_15, 3))  # ... the grafted model's is not
    ungraft_looped_blocks(m)
    assert not m._forward_pre_hooks and not m.patch_embed._forward_pre_hooks
    assert not any("canvas" in k for k in list(m.__dict__) + list(m.patch_embed.__dict__))
    with torch.no_grad(), pytest.raises(RuntimeError) as e:  # the plain model: diffusers' own error
        m(**_inputs(TINY_15, 3))
    assert not isinstance(e.value, ShapeError)


def test_sample_shape_with_a_negative_size_names_the_input():
    m, ad = _grafted(TINY)
    with pytest.raises(BackboneError, match=r"sample_inputs\['hidden_states'\] = \(2, -4, 4, 8, 8\) has a "
                                            r"negative size"):
        ad.token_layout(m, {"hidden_states": (2, -4, 4, 8, 8), "encoder_hidden_states": (2, 6, 16)})
