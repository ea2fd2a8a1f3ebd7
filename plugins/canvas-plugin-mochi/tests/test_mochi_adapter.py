"""Mochi adapter on the real diffusers class with tiny configs and random weights."""

import math

import pytest
import torch
from canvas_plugin_mochi.adapter import CanvasMochiAttnProcessor, MochiAdapter
from diffusers import MochiTransformer3DModel

from canvas_core.errors import ShapeError
from canvas_core.looping import SharpeningSchedule, get_adapter, graft_looped_blocks

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")

TINY = dict(
    patch_size=2,
    num_attention_heads=2,
    attention_head_dim=8,
    num_layers=2,
    pooled_projection_dim=12,
    in_channels=4,
    text_embed_dim=16,
    time_embed_dim=8,
    max_sequence_length=6,
)


def make(cfg=TINY, seed=0):
    torch.manual_seed(seed)
    m = MochiTransformer3DModel(**cfg).eval()
    with torch.no_grad():  # Mochi initialises RoPE frequencies to 0; make RoPE non-trivial
        m.pos_frequencies.normal_()
    return m


def inputs(cfg=TINY, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, cfg["max_sequence_length"])
    mask[1, 4:] = 0  # padded prompt in sample 1
    return dict(
        hidden_states=torch.randn(2, cfg["in_channels"], 2, 8, 8, generator=g),
        encoder_hidden_states=torch.randn(
            2, cfg["max_sequence_length"], cfg["text_embed_dim"], generator=g
        ),
        timestep=torch.tensor([3, 700]),
        encoder_attention_mask=mask,
    )


@pytest.mark.parametrize(
    "cfg",
    [
        TINY,
        dict(
            TINY, num_layers=3, num_attention_heads=3, attention_head_dim=4, pooled_projection_dim=8
        ),
    ],
)
def test_graft_is_identical_at_every_loop_count(cfg):
    m = make(cfg)
    kw = inputs(cfg)
    with torch.no_grad():
        ref = m(**kw).sample
    blocks, _ = graft_looped_blocks(m, max_loops=3)
    assert isinstance(get_adapter(m), MochiAdapter)
    for n in (1, 2, 3):
        for b in blocks:
            b.set_loops(n)
        with torch.no_grad():
            assert torch.equal(m(**kw).sample, ref)


def test_full_freeze_gradients_and_count():
    m = make()
    blocks, head = graft_looped_blocks(m, max_loops=3, freeze="full", action_dim=4)
    inner, ctx = 16, 12
    expected = 2 * (3 * inner + 3 * ctx + 2)  # docs: num_layers * (L*inner + L*pooled + L-1)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == expected
    m.train()
    out = m(**inputs()).sample  # (B, C, F, H, W)
    (out.pow(2).mean() + head(out).pow(2).mean()).backward()  # the head reads Mochi's layout
    got = {n for n, p in m.named_parameters() if p.grad is not None}
    assert got == {
        f"transformer_blocks.{i}.{k}"
        for i in range(2)
        for k in ("loop_emb", "loop_emb_1", "loop_gate")
    }


def test_from_pretrained_local_directory(tmp_path):
    m = make(seed=2)
    m.save_pretrained(tmp_path)
    loaded = MochiTransformer3DModel.from_pretrained(str(tmp_path)).eval()
    kw = inputs()
    with torch.no_grad():
        ref = m(**kw).sample
    graft_looped_blocks(loaded, max_loops=2)
    with torch.no_grad():
        assert torch.equal(loaded(**kw).sample, ref)


def reference(attn, hid, enc, valid, beta, bias, rope):
    """One sample, by hand: [video, valid text] joint attention."""
    H = attn.heads

    def heads(t):
        return t.unflatten(-1, (H, -1))

    q, k, v = heads(attn.to_q(hid)), heads(attn.to_k(hid)), heads(attn.to_v(hid))
    q, k = attn.norm_q(q), attn.norm_k(k)
    eq, ek, ev = (
        heads(attn.add_q_proj(enc)),
        heads(attn.add_k_proj(enc)),
        heads(attn.add_v_proj(enc)),
    )
    eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
    cos, sin = rope

    def rot(x):
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)

    q, k = rot(q), rot(k)
    Q = torch.cat([q, eq[valid]], 0).transpose(0, 1)
    K = torch.cat([k, ek[valid]], 0).transpose(0, 1)
    V = torch.cat([v, ev[valid]], 0).transpose(0, 1)
    nv = hid.shape[0]
    rows = torch.cat([torch.arange(nv), nv + valid])
    b = bias[rows][:, rows]
    logits = beta * Q @ K.transpose(-1, -2) / math.sqrt(Q.shape[-1]) + b
    w = torch.softmax(logits, -1)
    w = torch.nan_to_num(w, nan=0.0)
    o = (w @ V).transpose(0, 1).flatten(1)
    return attn.to_out[0](o[:nv]), attn.to_add_out(o[nv:])


def test_processor_matches_reference_with_padding_beta_and_topology():
    from canvas_core.looping import get_adapter
    from canvas_core.schema import CanvasTopology, Connection

    m = make()
    graft_looped_blocks(m, max_loops=1)
    ad = get_adapter(m)
    attn = m.transformer_blocks[0].original.attn1
    proc = attn.processor
    assert isinstance(proc, CanvasMochiAttnProcessor)
    torch.manual_seed(3)
    nv, nt = 8, 6  # 2 frames of 2x2 patches, 6 prompt tokens
    tl = ad.token_layout(m, {"hidden_states": (2, 4, 2, 4, 4), "encoder_hidden_states": (2, nt, 16)})
    assert tl.seq_len == nv + nt
    hid, enc = torch.randn(2, nv, 16), torch.randn(2, nt, 12)
    mask = torch.ones(2, nt)
    mask[1, 3:] = 0
    ang = torch.randn(nv, 2, 4)
    rope = (ang.cos(), ang.sin())
    topo = CanvasTopology(connections=[
        Connection("video", "video", t_src=0, t_dst=0),
        Connection("video", "video", t_src=0, t_dst=-1, weight=2.0, temporal_fill="drop"),
        Connection("video", "text", weight=0.5),
        Connection("text", "text"),
    ])
    idx = torch.tensor(tl.token_index)
    W = topo.to_attention_mask(tl.layout)[idx][:, idx]
    bias = torch.where(W > 0, W.clamp_min(1e-30).log(), torch.full_like(W, float("-inf")))
    with torch.no_grad():
        base = proc(attn, hid, enc, mask, image_rotary_emb=rope)
        ad.install_topology(m, CanvasTopology.dense(["video", "text"]), tl)
        dense = proc(attn, hid, enc, mask, image_rotary_emb=rope)
        torch.testing.assert_close(dense[0], base[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dense[1], base[1], rtol=1e-5, atol=1e-5)
        ad.install_topology(m, topo, tl)
        proc.beta = 2.0
        got = proc(attn, hid, enc, mask, image_rotary_emb=rope)
    for b in range(2):
        valid = torch.nonzero(mask[b]).flatten()
        rh, re = reference(attn, hid[b], enc[b], valid, 2.0, bias, rope)
        torch.testing.assert_close(got[0][b], rh, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got[1][b, valid], re, rtol=1e-4, atol=1e-5)


def test_token_layout_video_first():
    m = make()
    graft_looped_blocks(m, max_loops=2)
    tl = get_adapter(m).token_layout(m, inputs())
    assert (tl.layout.T, tuple(tl.layout.spatial_shape)) == (2, (6, 4))
    assert tl.token_index[:16] == tuple(range(16)) and tl.token_index[32:] == (
        16,
        17,
        18,
        19,
        20,
        21,
    )


def test_real_topology_dense_equals_backbone_and_sharpening_identity():
    pytest.importorskip("canvas_core.compiler.masks")
    from canvas_core.schema import CanvasTopology

    m = make()
    kw = inputs()
    with torch.no_grad():
        ref = m(**kw).sample
    graft_looped_blocks(m, max_loops=3, sharpening=SharpeningSchedule(3))
    ad = get_adapter(m)
    with torch.no_grad():
        assert torch.equal(m(**kw).sample, ref)
    ad.install_topology(m, CanvasTopology.dense(["video", "text"]), ad.token_layout(m, kw))
    with torch.no_grad():
        torch.testing.assert_close(m(**kw).sample, ref, rtol=1e-4, atol=1e-5)


def test_action_head_reads_mochi_channels_first_output():
    # Mochi returns (B, C, F, H, W); the head must pool frames and space, not channels, also
    # when F == C (where a (B, T, C, ...) head would silently pool the wrong axis).
    m = make(dict(TINY, in_channels=3))
    _, head = graft_looped_blocks(m, max_loops=2, action_dim=5)
    kw = dict(inputs(dict(TINY, in_channels=3)))
    kw["hidden_states"] = torch.randn(2, 3, 3, 8, 8)  # C == F == 3
    with torch.no_grad():
        out = m(**kw).sample
        assert out.shape[1:3] == (3, 3)
        want = head.net(out.mean(dim=(2, 3, 4)))
        torch.testing.assert_close(head(out), want)
        assert not torch.allclose(head(out), head.net(out.mean(dim=(1, 3, 4))))
        torch.testing.assert_close(head(out.mean(dim=(2, 3, 4))), want)  # (B, C) also works
    with pytest.raises(ShapeError, match=r"\(B, C=3, T"):
        head(out.transpose(1, 2)[:, :2])  # (B, F, C, ...) with F != C is refused


def test_attention_mask_with_every_prompt_token_padded_in_a_topology():
    from canvas_core.schema import CanvasTopology

    m = make()
    kw = inputs()
    kw["encoder_attention_mask"] = kw["encoder_attention_mask"].clone()
    kw["encoder_attention_mask"][1] = 0  # sample 1 has no prompt token at all
    with torch.no_grad():
        ref = m(**kw).sample
    graft_looped_blocks(m, max_loops=2)
    ad = get_adapter(m)
    ad.install_topology(m, CanvasTopology.dense(["video", "text"]), ad.token_layout(m, kw))
    with torch.no_grad():
        got = m(**kw).sample
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
