"""A grafted Mochi refuses, before any block runs, latents the backbone cannot run (an empty
batch, no frame, a height / width that is not whole patches): diffusers fails on them only at
the output's reshape, with a bare ``RuntimeError``.  The check is declared once by
``MochiAdapter.input_guards`` and follows graft, install, removal and ungraft."""

from __future__ import annotations

import pytest
import torch
from diffusers import MochiTransformer3DModel

from canvas_core import ungraft_looped_blocks
from canvas_core.errors import ShapeError
from canvas_core.looping import get_adapter, graft_looped_blocks
from canvas_core.schema import CanvasTopology
from canvas_core.testing import one_thread_fixture

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")
TINY = dict(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=12,
            in_channels=4, text_embed_dim=16, time_embed_dim=8, max_sequence_length=6)


_one_thread = one_thread_fixture()



def _guards(module):
    """The forward pre-hooks on ``module`` other than the graft's forward mark (``ForwardStart``)."""
    return [h for h in module._forward_pre_hooks.values() if type(h).__name__ != "ForwardStart"]

def _grafted():
    torch.manual_seed(0)
    m = MochiTransformer3DModel(**TINY).eval()
    with torch.no_grad():
        m.pos_frequencies.normal_()
    graft_looped_blocks(m, max_loops=2)
    return m, get_adapter(m)


def _inputs(frames: int = 2, h: int = 8, w: int = 8, batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(batch, 4, frames, h, w, generator=g),
                encoder_hidden_states=torch.randn(batch, 6, 16, generator=g),
                timestep=torch.tensor([3] * batch), encoder_attention_mask=torch.ones(batch, 6))


@pytest.mark.parametrize("installed", [False, True])
def test_partial_patches_and_empty_batches_are_refused(installed):
    m, ad = _grafted()
    if installed:
        ad.install_topology(m, CanvasTopology.dense(["video", "text"]), ad.token_layout(m, _inputs()))
    with torch.no_grad():
        with pytest.raises(ShapeError, match=r"height/width \(9, 8\) must be multiples of patch_size 2.*"
                                             r"\(10, 8\) or \(8, 8\)"):
            m(**_inputs(h=9))
        with pytest.raises(ShapeError, match=r"\(8, 7\)"):
            m(**_inputs(w=7))
        with pytest.raises(ShapeError, match=r"hidden_states \(0, 4, 2, 8, 8\) hold no sample"):
            m(**_inputs(batch=0))
        assert m(**_inputs(batch=1)).sample.shape == (1, 4, 2, 8, 8)


def test_ungraft_removes_the_check():
    m, ad = _grafted()
    ad.install_topology(m, CanvasTopology.dense(["video", "text"]), ad.token_layout(m, _inputs()))
    ad.install_topology(m, CanvasTopology.dense(["video", "text"]), ad.token_layout(m, _inputs()))
    assert len(_guards(m)) == 1 and len(m.rope._forward_pre_hooks) == 1
    ungraft_looped_blocks(m, remove_topology=True)
    assert not m._forward_pre_hooks and not m.rope._forward_pre_hooks
    with torch.no_grad(), pytest.raises(RuntimeError):  # the plain model: diffusers' own error
        m(**_inputs(h=9))
