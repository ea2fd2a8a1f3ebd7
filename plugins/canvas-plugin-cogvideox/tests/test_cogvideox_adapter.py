"""CogVideoX adapter on the real diffusers class with tiny configs and random weights."""

import math

import pytest
import torch
from canvas_plugin_cogvideox.adapter import CanvasCogVideoXAttnProcessor, CogVideoXAdapter
from diffusers import CogVideoXTransformer3DModel

from canvas_core.errors import BackboneError, CheckpointError, ShapeError
from canvas_core.looping import (
    SharpeningSchedule,
    get_adapter,
    graft_looped_blocks,
    load_loop_checkpoint,
    save_loop_checkpoint,
)

TINY = dict(
    num_attention_heads=2,
    attention_head_dim=8,
    in_channels=4,
    out_channels=4,
    time_embed_dim=8,
    text_embed_dim=16,
    num_layers=2,
    sample_width=8,
    sample_height=8,
    sample_frames=9,
    patch_size=2,
    max_text_seq_length=6,
)
TINY_15 = dict(
    TINY,
    num_layers=3,
    patch_size_t=2,
    use_rotary_positional_embeddings=True,
    attention_head_dim=6,
    num_attention_heads=3,
)


def make(cfg=TINY, seed=0):
    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(**cfg).eval()


def inputs(cfg=TINY, batch=2, frames=None, seed=1):
    frames = frames or (4 if cfg.get("patch_size_t") else 3)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, cfg["in_channels"], 8, 8, generator=g)
    enc = torch.randn(batch, cfg["max_text_seq_length"], cfg["text_embed_dim"], generator=g)
    kw = dict(hidden_states=x, encoder_hidden_states=enc, timestep=torch.tensor([5, 600][:batch]))
    if cfg.get("use_rotary_positional_embeddings"):
        pt = cfg.get("patch_size_t") or 1
        nv = ((frames + pt - 1) // pt) * (8 // cfg["patch_size"]) ** 2
        hd = cfg["attention_head_dim"]
        ang = torch.randn(nv, hd, generator=g)
        kw["image_rotary_emb"] = (ang.cos(), ang.sin())
    return kw


def loop_count(model, n):
    for b in model.transformer_blocks:
        b.set_loops(n)


@pytest.mark.parametrize("cfg", [TINY, TINY_15], ids=["cogvideox-1.0", "cogvideox-1.5-rope"])
def test_graft_is_identical_at_every_loop_count(cfg):
    m = make(cfg)
    kw = inputs(cfg)
    with torch.no_grad():
        ref = m(**kw).sample
    blocks, head = graft_looped_blocks(m, max_loops=4, freeze="full", action_dim=7)
    assert isinstance(get_adapter(m), CogVideoXAdapter)
    for n in (1, 2, 3, 4):
        loop_count(m, n)
        with torch.no_grad():
            assert torch.equal(m(**kw).sample, ref), n


def test_full_freeze_only_loop_and_head_get_gradients_and_count():
    m = make()
    total = sum(p.numel() for p in m.parameters())
    blocks, head = graft_looped_blocks(m, max_loops=3, freeze="full", action_dim=7)
    inner = TINY["num_attention_heads"] * TINY["attention_head_dim"]
    # docs/looping.md: num_layers * (2 * max_loops * inner_dim + (max_loops - 1))
    expected = TINY["num_layers"] * (2 * 3 * inner + 2)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == expected
    assert sum(b.trainable_params() for b in blocks) == expected
    assert sum(p.numel() for p in m.parameters()) == total + expected
    m.train()
    out = m(**inputs()).sample
    (out.pow(2).mean() + head(out).pow(2).mean()).backward()
    with_grad = {n for n, p in m.named_parameters() if p.grad is not None}
    assert with_grad == {
        f"transformer_blocks.{i}.{k}"
        for i in range(2)
        for k in ("loop_emb", "loop_emb_1", "loop_gate")
    }
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert head(out).shape == (2, 7)


def test_half_freeze_freezes_only_patch_embed():
    m = make()
    blocks, _ = graft_looped_blocks(m, max_loops=2, freeze="half")
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("patch_embed.") for n in frozen)
    assert frozen == {f"patch_embed.{n}" for n, _ in m.patch_embed.named_parameters()}


def test_cogvideox_2b_parameter_formula_documented():
    # CogVideoX-2B: 30 blocks, 30 heads x 64 = 1920; formula evaluated without building the model
    layers, inner, loops = 30, 1920, 3
    assert layers * (2 * loops * inner + loops - 1) == 345_660


def test_from_pretrained_local_directory(tmp_path):
    m = make(seed=3)
    m.save_pretrained(tmp_path / "transformer")
    loaded = CogVideoXTransformer3DModel.from_pretrained(
        str(tmp_path), subfolder="transformer"
    ).eval()
    kw = inputs()
    with torch.no_grad():
        ref = m(**kw).sample
        assert torch.equal(loaded(**kw).sample, ref)
    graft_looped_blocks(loaded, max_loops=3)
    with torch.no_grad():
        assert torch.equal(loaded(**kw).sample, ref)


def reference_attention(attn, hid, enc, beta, bias):
    """softmax(beta q.k/sqrt(d) + bias) v written out by hand (rows without keys -> 0)."""
    x = torch.cat([enc, hid], 1)
    B, S, _ = x.shape
    H = attn.heads
    q, k, v = (f(x).view(B, S, H, -1).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
    q, k = attn.norm_q(q), attn.norm_k(k)
    logits = beta * (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + bias
    m = logits.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(logits - m)
    den = e.sum(-1, keepdim=True)
    w = torch.where(den > 0, e / den.clamp_min(1e-30), torch.zeros_like(e))
    o = (w @ v).transpose(1, 2).reshape(B, S, -1)
    o = attn.to_out[0](o)
    return o[:, enc.shape[1] :], o[:, : enc.shape[1]]


def token_bias(topology, tl):
    """The dense reference: the topology's canvas weights gathered to the token order."""
    idx = torch.tensor(tl.token_index)
    W = topology.to_attention_mask(tl.layout)[idx][:, idx]
    return torch.where(W > 0, W.clamp_min(1e-30).log(), torch.full_like(W, float("-inf")))


def test_processor_beta_and_topology_match_reference():
    from canvas_core.schema import CanvasTopology, Connection

    m = make()
    graft_looped_blocks(m, max_loops=1)
    ad = get_adapter(m)
    attn = m.transformer_blocks[0].original.attn1
    proc = attn.processor
    assert isinstance(proc, CanvasCogVideoXAttnProcessor)
    tl = ad.token_layout(m, inputs(frames=2))
    torch.manual_seed(5)
    hid, enc = torch.randn(2, 32, 16), torch.randn(2, 6, 16)
    with torch.no_grad():
        base = proc(attn, hid, enc)
        ad.install_topology(m, CanvasTopology.dense(["video", "text"]), tl)
        torch.testing.assert_close(proc(attn, hid, enc)[0], base[0], rtol=1e-5, atol=1e-6)
        # video reads its own frame and (weight 2.5) the previous one, text reads video at weight
        # 0.5; no connection starts at the text, so text queries have no key at all
        topo = CanvasTopology(connections=[
            Connection("video", "video", t_src=0, t_dst=0),
            Connection("video", "video", t_src=0, t_dst=-1, weight=2.5, temporal_fill="drop"),
            Connection("video", "text", weight=0.5),
        ])
        ad.install_topology(m, topo, tl)
        proc.beta = 2.5
        got = proc(attn, hid, enc)
        ref = reference_attention(attn, hid, enc, 2.5, token_bias(topo, tl))
        torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-5)
        # text token 3 has no key: its attention output is zero, so only to_out's bias remains
        torch.testing.assert_close(got[1][:, 3], attn.to_out[0].bias.expand(2, -1))


def test_token_layout_and_installed_topology_follow_the_canvas():
    from canvas_core.schema import CanvasTopology

    m = make()
    graft_looped_blocks(m, max_loops=2)
    ad = get_adapter(m)
    kw = inputs(frames=2)
    tl = ad.token_layout(m, kw)
    lay = tl.layout
    # grid: 2 frames, 4x4 patches, 6 text tokens -> 2 extra rows of width 4
    assert (lay.T, tuple(lay.spatial_shape)) == (2, (6, 4))
    assert tl.seq_len == 6 + 2 * 16
    assert list(tl.token_index[:6]) == [16, 17, 18, 19, 20, 21]
    assert tl.token_index[6] == 0 and tl.token_index[6 + 16] == lay.flat_index(1, 0, 0)
    assert set(tl.token_index[6:]) == set(lay.region_indices("video"))
    assert set(tl.token_index[:6]) <= set(lay.region_indices("text"))
    # video attends video, text attends text (block-diagonal by region)
    topo = CanvasTopology.isolated(["video", "text"])
    ad.install_topology(m, topo, tl)
    procs = ad.attention_targets(m)
    assert len(procs) == 2 and all(p.canvas_topology is not None for p in procs)
    attn = m.transformer_blocks[0].original.attn1
    hid, enc = torch.randn(2, 32, 16), torch.randn(2, 6, 16)
    with torch.no_grad():
        got = attn.processor(attn, hid, enc)
        ref = reference_attention(attn, hid, enc, 1.0, token_bias(topo, tl))
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
    # changing a text token does not change any video output (isolated topology)
    enc2 = enc.clone()
    enc2[:, 2] += 5
    with torch.no_grad():
        assert torch.allclose(attn.processor(attn, hid, enc2)[0], got[0], atol=1e-6)
    with pytest.raises(ShapeError, match="rebuild"):
        attn.processor(attn, hid[:, :16], enc)
    ad.remove_topology(m)
    assert all(p.canvas_topology is None for p in ad.attention_targets(m))


def test_real_topology_dense_equals_backbone():
    pytest.importorskip("canvas_core.compiler.masks")
    from canvas_core.schema import CanvasTopology

    m = make()
    kw = inputs(frames=2)
    with torch.no_grad():
        ref = m(**kw).sample
    graft_looped_blocks(m, max_loops=2)
    ad = get_adapter(m)
    tl = ad.token_layout(m, kw)
    ad.install_topology(m, CanvasTopology.dense(["video", "text"]), tl)
    with torch.no_grad():
        torch.testing.assert_close(m(**kw).sample, ref, rtol=1e-4, atol=1e-5)
    ad.install_topology(m, CanvasTopology.isolated(["video", "text"]), tl)
    with torch.no_grad():
        assert not torch.allclose(m(**kw).sample, ref, atol=1e-4)


def test_sharpening_keeps_identity_and_changes_later_loops():
    m = make()
    kw = inputs()
    with torch.no_grad():
        ref = m(**kw).sample
    blocks, _ = graft_looped_blocks(m, max_loops=3, sharpening=SharpeningSchedule(3, 1.0, 4.0))
    with torch.no_grad():
        assert torch.equal(m(**kw).sample, ref)
        for b in blocks:
            b.loop_gate.fill_(1.0)
        sharp = m(**kw).sample
        for b in blocks:
            b.set_sharpening(None)
        soft = m(**kw).sample
    assert not torch.allclose(sharp, soft, atol=1e-5)


def test_checkpoint_roundtrip_and_mismatch(tmp_path):
    m = make()
    blocks, head = graft_looped_blocks(m, max_loops=3)
    with torch.no_grad():
        for b in blocks:
            b.loop_emb.normal_()
    save_loop_checkpoint(
        blocks, head, str(tmp_path / "l.safetensors"), metadata={"backbone": "tiny"}
    )
    m2 = make(seed=9)
    b2, h2 = graft_looped_blocks(m2, max_loops=3)
    load_loop_checkpoint(b2, h2, str(tmp_path / "l.safetensors"))
    assert all(torch.equal(a.loop_emb, b.loop_emb) for a, b in zip(blocks, b2))
    m3 = make(dict(TINY, num_layers=3))
    b3, h3 = graft_looped_blocks(m3, max_loops=3)
    with pytest.raises(CheckpointError, match="3 looped blocks|2 looped blocks"):
        load_loop_checkpoint(b3, h3, str(tmp_path / "l.safetensors"))


def test_token_layout_errors():
    m = make()
    ad = CogVideoXAdapter()
    with pytest.raises(BackboneError):
        ad.token_layout(m, {"hidden_states": (1, 2, 4, 7, 8), "encoder_hidden_states": (1, 3, 16)})
    with pytest.raises(Exception, match="sample_inputs"):
        ad.token_layout(m, {"hidden_states": (1, 2, 4, 8, 8)})
    with pytest.raises(BackboneError, match="attention"):
        from canvas_core.schema import CanvasTopology

        ad.install_topology(make(), CanvasTopology.dense(["video"]), None)


def test_user_layout_isolates_regions_end_to_end():
    """Regions declared on the backbone's grid; an isolated topology keeps the 'action' column of
    the output independent of the 'visual' part of the input through every block and loop."""
    from canvas_core.schema import CanvasLayout, CanvasTopology

    pytest.importorskip("canvas_core.compiler.masks")
    m = make()
    blocks, _ = graft_looped_blocks(m, max_loops=3)
    with torch.no_grad():
        for b in blocks:
            b.loop_gate.fill_(0.7)
            b.loop_emb.normal_()
    ad = get_adapter(m)
    kw = inputs(frames=2)
    grid = ad.token_layout(m, kw).layout
    T, (Hs, W) = grid.T, tuple(grid.spatial_shape)
    mine = CanvasLayout(
        T=T,
        spatial_shape=(Hs, W),
        d_model=16,
        regions={
            "visual": (0, T, 0, 4, 0, W - 1),
            "action": (0, T, 0, 4, W - 1, W),
            "text": (0, 1, 4, Hs, 0, W),
        },
    )
    tokens = ad.token_layout(m, kw, layout=mine)
    ad.install_topology(m, CanvasTopology.isolated(["visual", "action", "text"]), tokens)
    x2 = kw["hidden_states"].clone()
    x2[..., :, 0:2, 0:2] += 3.0  # latent pixels of patch (row 0, col 0): region "visual"
    with torch.no_grad():
        a = m(**kw).sample
        b = m(**dict(kw, hidden_states=x2)).sample
    p = 2
    act = (slice(None), slice(None), slice(None), slice(None), slice((W - 1) * p, W * p))
    torch.testing.assert_close(a[act], b[act])
    assert not torch.allclose(a[..., : (W - 1) * p], b[..., : (W - 1) * p])
    with pytest.raises(BackboneError, match="grid"):
        ad.token_layout(m, kw, layout=CanvasLayout(T=T, spatial_shape=(Hs + 1, W), d_model=16))


def test_cogvideox_attention_type_is_cross_attention():
    import canvas_core
    from canvas_core import CrossAttention
    from canvas_core.plugins import create_attention

    m = create_attention("cogvideox", d_model=16, n_heads=2)
    assert type(m).__name__ == "CogVideoXAttention" and canvas_core.CogVideoXAttention is type(m)
    ref = CrossAttention(d_model=16, n_heads=2)
    ref.load_state_dict(m.state_dict())
    q, k = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    torch.testing.assert_close(m(q, k, k), ref(q, k, k))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bf16 graft on GPU)")
def test_cuda_bf16_graft_identity_and_topology():
    from canvas_core.schema import CanvasTopology

    m = make().to("cuda", torch.bfloat16)
    kw = {k: (v.to("cuda") if torch.is_tensor(v) else v) for k, v in inputs().items()}
    kw["hidden_states"] = kw["hidden_states"].bfloat16()
    kw["encoder_hidden_states"] = kw["encoder_hidden_states"].bfloat16()
    with torch.no_grad():
        ref = m(**kw).sample
    blocks, head = graft_looped_blocks(m, max_loops=3)
    assert all(
        b.loop_emb.device.type == "cuda" and b.loop_emb.dtype == torch.float32 for b in blocks
    )
    with torch.no_grad():
        assert torch.equal(m(**kw).sample, ref)
    ad = get_adapter(m)
    ad.install_topology(m, CanvasTopology.dense(["video", "text"]), ad.token_layout(m, kw))
    with torch.no_grad():
        torch.testing.assert_close(m(**kw).sample, ref, rtol=2e-2, atol=2e-2)
    m.train()
    out = m(**kw).sample
    head(out.float()).sum().backward()
    assert all(b.loop_gate.grad is not None for b in blocks)


@pytest.mark.parametrize(
    "over, frames",
    [
        (dict(num_layers=1, patch_size=4), 3),
        (dict(num_layers=3, num_attention_heads=4, attention_head_dim=4, temporal_compression_ratio=2), 5),
        (dict(use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True), 3),
        (dict(patch_size_t=3, use_rotary_positional_embeddings=True, ofs_embed_dim=8), 6),
        (dict(max_text_seq_length=3, norm_elementwise_affine=False), 4),
    ],
    ids=["p4-1layer", "tcr2-3layers", "learned-pos", "pt3-ofs", "short-text"],
)
def test_other_configs_identity_at_every_loop_count_and_dense_topology(over, frames):
    from canvas_core.schema import CanvasTopology

    cfg = dict(TINY, **over)
    m = make(cfg)
    kw = inputs(cfg, frames=frames)
    if cfg.get("ofs_embed_dim"):
        kw["ofs"] = torch.tensor([2.0, 2.0])
    with torch.no_grad():
        ref = m(**kw).sample
    blocks, head = graft_looped_blocks(m, max_loops=4)
    for n in (1, 2, 3, 4):
        loop_count(m, n)
        with torch.no_grad():
            assert torch.equal(m(**kw).sample, ref), n
    ad = get_adapter(m)
    tl = ad.token_layout(m, kw)
    pt = cfg.get("patch_size_t") or 1
    assert tl.info["frames"] == -(-frames // pt)
    assert tl.seq_len == cfg["max_text_seq_length"] + tl.info["frames"] * (8 // cfg["patch_size"]) ** 2
    ad.install_topology(m, CanvasTopology.dense(["video", "text"]), tl)
    with torch.no_grad():
        torch.testing.assert_close(m(**kw).sample, ref, rtol=1e-5, atol=1e-5)
    assert head(ref).shape == (2, 7)
