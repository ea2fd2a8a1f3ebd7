"""ViT adapter on real timm VisionTransformers (tiny configs, random weights)."""

import math

import pytest
import timm
import torch
from canvas_plugin_vit.adapter import CanvasViTAttention, ViTAdapter

from canvas_core.errors import BackboneError
from canvas_core.looping import SharpeningSchedule, get_adapter, graft_looped_blocks

TINY = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2, num_classes=5)


def make(name="vit_tiny_patch16_224", seed=0, **over):
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **{**TINY, **over}).eval()


@pytest.mark.parametrize(
    "over", [{}, dict(reg_tokens=3, depth=3), dict(class_token=False, global_pool="avg")]
)
def test_graft_is_identical_at_every_loop_count(over):
    m = make(**over)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
    blocks, head = graft_looped_blocks(m, max_loops=3)
    assert isinstance(get_adapter(m), ViTAdapter)
    for n in (1, 2, 3):
        for b in blocks:
            b.set_loops(n)
        with torch.no_grad():
            assert torch.equal(m(x), ref)


def test_state_dict_keys_of_attention_unchanged():
    m = make()
    keys = {k for k in m.state_dict() if ".attn." in k}
    graft_looped_blocks(m, max_loops=2)
    after = {k.replace(".original.", ".") for k in m.state_dict() if ".attn." in k}
    assert keys == after
    assert all(isinstance(b.original.attn, CanvasViTAttention) for b in m.blocks)


def test_full_freeze_gradients_and_count():
    m = make(depth=3)
    blocks, head = graft_looped_blocks(m, max_loops=3, action_dim=6)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 3 * (3 * 32 + 2)
    m.train()
    feats = m.forward_features(torch.randn(2, 3, 32, 32))
    (m.forward_head(feats).pow(2).mean() + head(feats[:, 0]).pow(2).mean()).backward()
    got = {n for n, p in m.named_parameters() if p.grad is not None}
    assert got == {f"blocks.{i}.{k}" for i in range(3) for k in ("loop_emb", "loop_gate")}
    assert head(feats[:, 0]).shape == (2, 6)


def test_half_freeze():
    m = make()
    graft_looped_blocks(m, max_loops=2, freeze="half")
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert frozen == {f"patch_embed.{n}" for n, _ in m.patch_embed.named_parameters()}


def test_pretrained_from_local_file(tmp_path):
    from safetensors.torch import save_file

    src = make(seed=4)
    path = tmp_path / "model.safetensors"
    save_file(src.state_dict(), str(path))
    m = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path), num_classes=5),
        **TINY,
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = src(x)
        assert torch.equal(m(x), ref)
    graft_looped_blocks(m, max_loops=3)
    with torch.no_grad():
        assert torch.equal(m(x), ref)


def reference_attention(attn, x, beta, bias):
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = beta * (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + bias
    w = torch.nan_to_num(torch.softmax(logits, -1), nan=0.0)
    return attn.proj((w @ v).transpose(1, 2).reshape(B, N, -1))


def test_attention_beta_and_topology_match_reference():
    m = make()
    graft_looped_blocks(m, max_loops=1)
    ad = get_adapter(m)
    tl = ad.token_layout(m, torch.randn(1, 3, 32, 32))
    lay = tl.layout
    assert (lay.T, tuple(lay.spatial_shape)) == (1, (5, 4)) and tl.token_index[0] == 16
    assert tl.token_index[1:] == tuple(range(16))

    from canvas_core.schema import CanvasLayout, CanvasTopology, Connection

    # CLS reads patches and itself; each patch reads its own row only
    rows = {f"r{r}": (0, 1, r, r + 1, 0, 4) for r in range(4)}
    mine = CanvasLayout(T=1, spatial_shape=(5, 4), d_model=32, regions={**rows, "cls": (0, 1, 4, 5, 0, 4)})
    top = CanvasTopology(connections=[Connection("cls", r) for r in [*rows, "cls"]]
                         + [Connection(r, r) for r in rows])
    tl = tl.with_layout(mine)
    ad.install_topology(m, top, tl)
    attn = m.blocks[0].original.attn
    x = torch.randn(2, 17, 32)
    idx = torch.tensor(tl.token_index)
    W = top.to_attention_mask(mine)[idx][:, idx]
    bias = torch.where(W > 0, 0.0, float("-inf"))
    with torch.no_grad():
        torch.testing.assert_close(
            attn(x), reference_attention(attn, x, 1.0, bias), rtol=1e-5, atol=1e-5
        )
        attn.beta = 3.0
        torch.testing.assert_close(
            attn(x), reference_attention(attn, x, 3.0, bias), rtol=1e-5, atol=1e-5
        )
        ad.remove_topology(m)
        torch.testing.assert_close(
            attn(x), reference_attention(attn, x, 3.0, torch.zeros(17, 17)), rtol=1e-5, atol=1e-5
        )
        attn.beta = 1.0


def test_real_topology_and_sharpening():
    pytest.importorskip("canvas_core.compiler.masks")
    from canvas_core.schema import CanvasTopology, Connection

    m = make()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
    blocks, _ = graft_looped_blocks(m, max_loops=3, sharpening=SharpeningSchedule(3, 1.0, 2.0))
    ad = get_adapter(m)
    tl = ad.token_layout(m, {"x": x})
    ad.install_topology(m, CanvasTopology.dense(["patches", "cls"]), tl)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-5)
    # CLS may not be read by patches: patch tokens become independent of the CLS token
    ad.install_topology(
        m,
        CanvasTopology(
            connections=[
                Connection(src="patches", dst="patches"),
                Connection(src="cls", dst="patches"),
                Connection(src="cls", dst="cls"),
            ]
        ),
        tl,
    )
    with torch.no_grad():
        f1 = m.forward_features(x)
        m.cls_token.add_(1.0)
        f2 = m.forward_features(x)
    torch.testing.assert_close(f1[:, 1:], f2[:, 1:])
    assert not torch.allclose(f1[:, 0], f2[:, 0])


def test_topology_refused_when_some_blocks_keep_an_attention_it_cannot_replace():
    from timm.layers import Attention

    from canvas_core.schema import CanvasTopology

    class OwnAttention(Attention):  # a subclass: the adapter does not replace it
        pass

    m = make()
    old = m.blocks[1].attn
    m.blocks[1].attn = OwnAttention(32, num_heads=2, qkv_bias=True)
    m.blocks[1].attn.load_state_dict(old.state_dict())
    graft_looped_blocks(m, max_loops=2)
    ad = get_adapter(m)
    tl = ad.token_layout(m)
    with pytest.raises(BackboneError, match="only 1 of the 2 blocks"):
        ad.install_topology(m, CanvasTopology.dense(["patches", "cls"]), tl)
    assert all(getattr(t, "canvas_bias", None) is None for t in ad.attention_targets(m))


@pytest.mark.parametrize("kw", [
    dict(class_token=False, global_pool="avg", reg_tokens=3),
    dict(reg_tokens=4, patch_size=4, depth=3),
    dict(dynamic_img_size=True, reg_tokens=1),
    dict(global_pool="map"),
    dict(no_embed_class=True, img_size=(32, 48)),
])
def test_other_vit_configs_identity_and_dense_topology(kw):
    from canvas_core.schema import CanvasTopology

    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**TINY, **kw}).eval()
    size = kw.get("img_size", (32, 32))
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = m(x)
    blocks, _ = graft_looped_blocks(m, max_loops=4)
    for n in (1, 2, 3, 4):
        for b in blocks:
            b.set_loops(n)
        with torch.no_grad():
            assert torch.equal(m(x), ref), n
    ad = get_adapter(m)
    tl = ad.token_layout(m, {"x": x})
    assert tl.seq_len == m.num_prefix_tokens + (size[0] // m.patch_embed.patch_size[0]) * (
        size[1] // m.patch_embed.patch_size[1]
    )
    ad.install_topology(m, CanvasTopology.dense(list(tl.layout.regions)), tl)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
