"""A topology whose canvas attention was replaced after the install refuses to run.

``model.fuse_qkv_projections()`` or ``model.set_attn_processor(...)`` on a grafted diffusers model
put other processors in place of the canvas ones that run an installed topology.  The next call
used to run without the topology (frame 0 reading frame 2 under a frame-local topology), without
its gated modules, with no error; ``installed_topology`` said None while the gated modules and
the shape guard stayed, and reinstalling asked to "call graft_looped_blocks first".  Now every
call refuses with a ``BackboneError`` naming the replaced blocks and the fix; removing the
topology works in that state and leaves the plain grafted model.  Mochi's report notes that the
caption reaches the video through the time embedding when no connection lets video read text.
"""

from __future__ import annotations

import copy

import pytest
import torch

from canvas_core.errors import BackboneError
from canvas_core.looping import get_adapter, graft_looped_blocks
from canvas_core.schema import CanvasTopology, Connection
from canvas_core.testing import one_thread_fixture

from tests.looping._backbone_setup import inputs, make, run

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")
_one_thread = one_thread_fixture()

LOCAL = CanvasTopology(connections=[Connection("video", "video", t_src=0, t_dst=0), Connection("text", "text"),
                                    Connection("video", "video", fn="pooling")])


def _grafted(kind):
    """A grafted tiny model, its inputs, adapter, output and state-dict keys before any install."""
    m, kw = make(kind), inputs(kind)
    graft_looped_blocks(m, max_loops=2, freeze="full")
    with torch.no_grad():
        plain = run(kind, m, kw)
    return m, kw, get_adapter(m), plain, set(m.state_dict())


def _replace(m, how):
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

    if how == "fuse":
        m.fuse_qkv_projections()
    else:
        m.set_attn_processor(CogVideoXAttnProcessor2_0())


@pytest.mark.parametrize("how", ["fuse", "set_attn_processor"])
def test_call_after_processors_replaced_is_refused(how):
    m, kw, ad, _, _ = _grafted("cogvideox")
    ad.install_topology(m, LOCAL, ad.token_layout(m, kw))
    _replace(m, how)
    with torch.no_grad(), pytest.raises(BackboneError, match=r"'cogvideox'.*block 0.*block 1") as e:
        m(**kw)
    assert "remove_topology" in str(e.value)
    assert ad.installed_topology(m) is not None  # still there (and refusing) until removed


def test_remove_after_set_attn_processor_gives_the_plain_grafted_model_and_reinstall_works():
    m, kw, ad, plain, keys = _grafted("cogvideox")
    tok = ad.token_layout(m, kw)
    ad.install_topology(m, LOCAL, tok)
    assert any("canvas_fn" in k for k in m.state_dict())
    _replace(m, "set_attn_processor")
    with pytest.raises(BackboneError, match="replaced") as e:  # reinstall without removing: the real cause
        ad.install_topology(m, LOCAL, tok)
    assert "graft_looped_blocks first" not in str(e.value) and "remove_topology" in str(e.value)
    ad.remove_topology(m)
    assert ad.installed_topology(m) is None
    assert set(m.state_dict()) == keys  # the gated modules are gone
    with torch.no_grad():
        assert torch.equal(run("cogvideox", m, kw), plain)
        m(**inputs_other_frames(kw))  # no shape guard of the removed topology left
    with pytest.raises(BackboneError, match="grafted.*adapter.prepare") as e:
        ad.install_topology(m, LOCAL, tok)
    assert "graft_looped_blocks first" not in str(e.value)
    ad.prepare(m)  # wraps the backbone's own processors again
    ad.install_topology(m, LOCAL, tok)
    with torch.no_grad():
        a = run("cogvideox", m, kw)
        x = kw["hidden_states"].clone()
        x[:, 2:] += 5  # patched frame 1
        b = run("cogvideox", m, dict(kw, hidden_states=x))
    assert torch.equal(a[:, :2], b[:, :2])  # frame-local again: patched frame 0 ignores frame 1


def inputs_other_frames(kw):
    """``kw`` with 2 latent frames (1 patched frame) instead of 4."""
    n = kw["image_rotary_emb"][0].shape[0] // 2
    return dict(kw, hidden_states=kw["hidden_states"][:, :2],
                image_rotary_emb=tuple(t[:n] for t in kw["image_rotary_emb"]))


def test_fused_then_removed_then_unfused_is_the_plain_grafted_model():
    m, kw, ad, plain, _ = _grafted("cogvideox")
    ad.install_topology(m, LOCAL, ad.token_layout(m, kw))
    _replace(m, "fuse")
    ad.remove_topology(m)  # also clears the canvas processors diffusers keeps to unfuse
    assert not any("canvas_fn" in k for k in m.state_dict())
    m.unfuse_qkv_projections()
    assert ad.installed_topology(m) is None
    with torch.no_grad():
        assert torch.equal(run("cogvideox", m, kw), plain)


def test_unfusing_puts_the_topology_back_and_a_copy_checks_its_own_processors():
    m, kw, ad, _, _ = _grafted("cogvideox")
    ad.install_topology(m, LOCAL, ad.token_layout(m, kw))
    with torch.no_grad():
        a = run("cogvideox", m, kw)
        m2 = copy.deepcopy(m)
        assert torch.equal(run("cogvideox", m2, kw), a)
        _replace(m, "fuse")
        with pytest.raises(BackboneError):
            m(**kw)
        assert torch.equal(run("cogvideox", m2, kw), a)  # the copy's processors are untouched
        m.unfuse_qkv_projections()
        assert torch.equal(run("cogvideox", m, kw), a)


def test_mochi_replaced_processor_is_refused_then_removable():
    from diffusers.models.attention_processor import MochiAttnProcessor2_0

    m, kw, ad, plain, keys = _grafted("mochi")
    ad.install_topology(m, LOCAL, ad.token_layout(m, kw))
    block = m.transformer_blocks[1]
    getattr(block, "original", block).attn1.processor = MochiAttnProcessor2_0()  # one block only
    with torch.no_grad(), pytest.raises(BackboneError, match=r"'mochi'.*in block 1 \(MochiAttnProcessor2_0\)"):
        m(**kw)
    ad.remove_topology(m)
    assert set(m.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(run("mochi", m, kw), plain)


def test_mochi_report_notes_the_caption_in_the_time_embedding():
    m, kw, ad, _, _ = _grafted("mochi")
    tok = ad.token_layout(m, kw)
    apart = ad.install_topology(m, CanvasTopology(connections=[Connection("video", "video"),
                                                               Connection("text", "text")]), tok)
    assert "time_embed.pooler" in apart.report()
    linked = ad.install_topology(m, CanvasTopology(connections=[Connection("video", "video"),
                                                                Connection("video", "text")]), tok)
    assert "time_embed.pooler" not in linked.report()
