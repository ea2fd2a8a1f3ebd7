"""A topology installed for one input shape refuses a call of other shapes with as many tokens.

The token layout of ``install_topology`` places each token of the attention sequence on the
canvas for the shapes it was built for (text length, latent / patch grid).  Another call with
the same token count but e.g. another text length (CogVideoX: 2 frames of 4x4 patches + 6 text
tokens and 1 frame + 22 text tokens are both 38 tokens) or another patch grid (a ViT with
``dynamic_img_size``: 4x4 and 8x2 patches) used to run the plan on tokens it does not describe,
mixing text and video tokens silently.  Each call is now checked (Python ints from shapes:
no device sync, no graph break) and refused with a ``ShapeError`` naming what differs.
"""

from __future__ import annotations

import copy

import pytest
import torch

from canvas_core.errors import ShapeError
from canvas_core.looping import get_adapter, graft_looped_blocks
from canvas_core.looping.installed import SHAPE_CHECK_ATTR, guard_input_shapes
from canvas_core.schema import CanvasTopology, Connection
from canvas_core.testing import one_thread_fixture

from tests.looping._backbone_setup import inputs, make, run

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")

VIDEO_TEXT = CanvasTopology(connections=[Connection("video", "video", t_src=0, t_dst=0), Connection("text", "text"),
                                         Connection("video", "text")])
VIT_TOPO = CanvasTopology(connections=[Connection("patches", "patches"), Connection("cls", "cls"),
                                       Connection("cls", "patches")])


_one_thread = one_thread_fixture()


def _installed(kind, topo):
    m, kw = make(kind), inputs(kind)
    graft_looped_blocks(m, max_loops=2, freeze="none")
    ad = get_adapter(m)
    ad.install_topology(m, topo, ad.token_layout(m, kw))
    return m, ad, kw


def _cog_inputs(frames, h, w, text, seed=5):
    """CogVideoX inputs: ``frames`` latent frames (patch_size_t 2), ``h x w`` latents (patch 2)."""
    g = torch.Generator().manual_seed(seed)
    n_video = ((frames + 1) // 2) * (h // 2) * (w // 2)
    ang = torch.randn(n_video, 8, generator=g)
    return dict(hidden_states=torch.randn(2, frames, 4, h, w, generator=g),
                encoder_hidden_states=torch.randn(2, text, 16, generator=g),
                timestep=torch.tensor([5, 600]), image_rotary_emb=(ang.cos(), ang.sin()))


def _mochi_inputs(frames, h, w, text, seed=5):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, text)
    mask[1, text - 2:] = 0  # padded prompt tokens in sample 1: Mochi's valid-rows path
    return dict(hidden_states=torch.randn(2, 4, frames, h, w, generator=g),
                encoder_hidden_states=torch.randn(2, text, 16, generator=g),
                timestep=torch.tensor([3, 700]), encoder_attention_mask=mask)


# --- CogVideoX -----------------------------------------------------------------------------------
def test_cogvideox_other_text_length_same_token_count_is_refused():
    m, ad, kw = _installed("cogvideox", VIDEO_TEXT)  # 2 frames of 4x4 patches + 6 text: 38 tokens
    kw2 = _cog_inputs(2, 8, 8, 22)  # 1 frame of 4x4 + 22 text: 38 tokens
    assert ad.token_layout(m, kw2).seq_len == ad.installed_topology(m).seq_len
    with torch.no_grad(), pytest.raises(ShapeError, match=r"text tokens: installed 6, given 22") as e:
        run("cogvideox", m, kw2)
    assert "latent frames (patched): installed 2, given 1" in str(e.value)
    assert "install the topology again" in str(e.value)
    # rebuilt for these shapes it runs
    ad.install_topology(m, VIDEO_TEXT, ad.token_layout(m, kw2))
    with torch.no_grad():
        assert torch.isfinite(run("cogvideox", m, kw2)).all()


def test_cogvideox_other_patch_grid_same_text_is_refused():
    m, ad, kw = _installed("cogvideox", VIDEO_TEXT)  # 2 x 4x4 patches + 6 text
    kw2 = _cog_inputs(2, 8, 16, 6)  # 1 x 4x8 patches + 6 text: 38 tokens as well
    with torch.no_grad(), pytest.raises(ShapeError, match=r"patch columns: installed 4, given 8"):
        run("cogvideox", m, kw2)


def test_cogvideox_processor_checks_text_length_per_call():
    """Without the model-level check (blocks called on their own) the attention processor still
    refuses another text length."""
    m, ad, kw = _installed("cogvideox", VIDEO_TEXT)
    guard_input_shapes(m.patch_embed, None)
    assert not m.patch_embed._forward_pre_hooks
    with torch.no_grad(), pytest.raises(ShapeError, match=r"text tokens: installed 6, given 22"):
        run("cogvideox", m, _cog_inputs(2, 8, 8, 22))


def test_cogvideox_same_shapes_still_run_and_removal_lifts_the_check():
    m, ad, kw = _installed("cogvideox", VIDEO_TEXT)
    with torch.no_grad():
        a = run("cogvideox", m, kw)
        b = run("cogvideox", m, dict(kw, hidden_states=kw["hidden_states"] + 1))  # same shapes, other values
    assert a.shape == b.shape
    ad.remove_topology(m)
    assert SHAPE_CHECK_ATTR not in m.patch_embed.__dict__ and not m.patch_embed._forward_pre_hooks
    with torch.no_grad():
        run("cogvideox", m, _cog_inputs(2, 8, 8, 22))  # the backbone's own attention: any shape


def test_cogvideox_compiled_refuses_other_shapes():
    m, ad, kw = _installed("cogvideox", VIDEO_TEXT)
    torch._dynamo.reset()
    try:
        full = torch.compile(lambda **k: run("cogvideox", m, k), backend="eager", fullgraph=True)
        with torch.no_grad():  # the check breaks no graph
            torch.testing.assert_close(full(**kw), run("cogvideox", m, kw))
        torch._dynamo.reset()
        f = torch.compile(lambda **k: run("cogvideox", m, k), backend="eager")
        with torch.no_grad():
            f(**kw)
            with pytest.raises(ShapeError, match=r"text tokens: installed 6, given 22"):
                f(**_cog_inputs(2, 8, 8, 22))
            with pytest.raises(ShapeError, match=r"patch columns: installed 4, given 8"):
                f(**_cog_inputs(2, 8, 16, 6))
    finally:
        torch._dynamo.reset()


# --- Mochi ---------------------------------------------------------------------------------------
def test_mochi_other_patch_grid_same_token_count_is_refused():
    m, ad, kw = _installed("mochi", VIDEO_TEXT)  # 2 frames of 4x4 patches + 6 text: 38 tokens
    kw2 = _mochi_inputs(1, 8, 16, 6)  # 1 frame of 4x8 + 6 text: 38 tokens
    assert ad.token_layout(m, kw2).seq_len == ad.installed_topology(m).seq_len
    with torch.no_grad(), pytest.raises(ShapeError, match=r"latent frames.*installed 2, given 1") as e:
        run("mochi", m, kw2)
    assert "patch columns: installed 4, given 8" in str(e.value)
    ad.install_topology(m, VIDEO_TEXT, ad.token_layout(m, kw2))
    with torch.no_grad():
        assert torch.isfinite(run("mochi", m, kw2)).all()


def test_mochi_other_text_length_same_token_count_is_refused():
    m, ad, kw = _installed("mochi", VIDEO_TEXT)
    kw2 = _mochi_inputs(1, 8, 8, 22)  # 1 frame of 4x4 + 22 text: 38 tokens
    with torch.no_grad(), pytest.raises(ShapeError, match=r"latent frames.*installed 2, given 1"):
        run("mochi", m, kw2)  # the model's RoPE call: the grid
    guard_input_shapes(m.rope, None)  # the attention processor on its own: the text length
    with torch.no_grad(), pytest.raises(ShapeError, match=r"text tokens: installed 6, given 22"):
        run("mochi", m, kw2)


def test_mochi_same_shapes_with_padded_text_still_run():
    m, ad, kw = _installed("mochi", VIDEO_TEXT)
    with torch.no_grad():
        run("mochi", m, kw)
        run("mochi", m, dict(kw, encoder_attention_mask=torch.ones(2, 6)))  # other valid rows


# --- ViT (dynamic_img_size) ----------------------------------------------------------------------
def test_vit_other_patch_grid_same_token_count_is_refused():
    m, ad, kw = _installed("vit", VIT_TOPO)  # 4x4 patches + 3 prefix tokens: 19
    xb = torch.randn(1, 3, 64, 16)  # 8x2 patches: 19 tokens as well
    assert ad.token_layout(m, {"x": xb}).seq_len == ad.installed_topology(m).seq_len
    with torch.no_grad():
        with pytest.raises(ShapeError, match=r"patch grid \(rows, columns\): installed 4x4, given 8x2"):
            m(xb)
        with pytest.raises(ShapeError, match="install the topology again"):
            m.forward_features(xb)
        m(kw["x"])  # the installed shapes still run
    ad.install_topology(m, VIT_TOPO, ad.token_layout(m, {"x": xb}))
    with torch.no_grad():
        assert torch.isfinite(m(xb)).all()


def test_vit_copy_checks_its_own_installation():
    m, ad, kw = _installed("vit", VIT_TOPO)
    c = copy.deepcopy(m)
    xb = torch.randn(1, 3, 64, 16)
    ad.install_topology(c, VIT_TOPO, ad.token_layout(c, {"x": xb}))  # the copy: the 8x2 grid
    with torch.no_grad():
        c(xb)
        with pytest.raises(ShapeError, match="installed 4x4, given 8x2"):
            m(xb)


def test_vit_compiled_refuses_other_grid():
    m, ad, kw = _installed("vit", VIT_TOPO)
    torch._dynamo.reset()
    try:
        full = torch.compile(m, backend="eager", fullgraph=True)
        with torch.no_grad():  # the check breaks no graph
            torch.testing.assert_close(full(kw["x"]), m(kw["x"]))
        torch._dynamo.reset()
        f = torch.compile(m, backend="eager")
        with torch.no_grad():
            f(kw["x"])
            with pytest.raises(ShapeError, match="installed 4x4, given 8x2"):
                f(torch.randn(1, 3, 64, 16))
            with pytest.raises(ShapeError, match="installed 4x4, given 2x8"):
                f(torch.randn(1, 3, 16, 64))  # now with the image size dynamic
    finally:
        torch._dynamo.reset()
