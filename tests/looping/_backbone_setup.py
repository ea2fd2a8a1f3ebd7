"""Shared set-up of the backbone-plan tests: tiny CogVideoX / Mochi / timm ViT models with random
weights, the dense reference attention core (per-connection ``to_attention_mask`` matrices gathered
to token order, one softmax per fn type with ``log w`` biases, types mixed by ``W_f(p)``, zero for
a query without keys), and hypothesis strategies for topologies.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import strategies as st

from canvas_core.looping import get_adapter, graft_looped_blocks
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection, RegionSpec, TemporalFill

diffusers = pytest.importorskip("diffusers")
diffusers.utils.logging.set_verbosity_error()
timm = pytest.importorskip("timm")

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")

COG = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8,
           text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
           max_text_seq_length=6, patch_size_t=2, use_rotary_positional_embeddings=True)
MOCHI = dict(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=12,
             in_channels=4, text_embed_dim=16, time_embed_dim=8, max_sequence_length=6)
VIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2, num_classes=5, reg_tokens=2,
           dynamic_img_size=True)


# --- models -------------------------------------------------------------------------------------
def make(kind, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    if kind == "cogvideox":
        m = diffusers.CogVideoXTransformer3DModel(**COG)
    elif kind == "mochi":
        m = diffusers.MochiTransformer3DModel(**MOCHI)
        with torch.no_grad():
            m.pos_frequencies.normal_()
    else:
        m = timm.create_model("vit_tiny_patch16_224", pretrained=False, **VIT)
    return m.to(dtype).eval()


def inputs(kind, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    if kind == "cogvideox":
        x = torch.randn(2, 4, 4, 8, 8, generator=g)
        enc = torch.randn(2, 6, 16, generator=g)
        ang = torch.randn(2 * 16, 8, generator=g)
        return dict(hidden_states=x.to(dtype), encoder_hidden_states=enc.to(dtype), timestep=torch.tensor([5, 600]),
                    image_rotary_emb=(ang.cos().to(dtype), ang.sin().to(dtype)))
    if kind == "mochi":
        mask = torch.ones(2, 6)
        mask[1, 4:] = 0  # padded prompt tokens in sample 1: dropped per sample
        return dict(hidden_states=torch.randn(2, 4, 2, 8, 8, generator=g).to(dtype),
                    encoder_hidden_states=torch.randn(2, 6, 16, generator=g).to(dtype),
                    timestep=torch.tensor([3, 700]), encoder_attention_mask=mask)
    return dict(x=torch.randn(2, 3, 32, 32, generator=g).to(dtype))


def run(kind, m, kw):
    if kind == "vit":
        return m(kw["x"])
    return m(**kw).sample


def first_input(kind, kw):
    return kw["x"] if kind == "vit" else kw["hidden_states"]


def user_layout(tokens, period):
    """Two video/patch regions (the top half with ``period``) and the extra-token region, on the
    token grid."""
    lay = tokens.layout
    main, extra = ("patches", "cls") if "patches" in lay.regions else ("video", "text")
    b = lay.regions[main].bounds
    T, (H, W) = lay.T, tuple(lay.spatial_shape)
    half = (b[3] - b[2]) // 2
    regions = {"top": RegionSpec((0, T, b[2], b[2] + half, 0, W), period=period),
               "bottom": (0, T, b[2] + half, b[3], 0, W), "extra": lay.regions[extra].bounds}
    return tokens.with_layout(CanvasLayout(T=T, spatial_shape=(H, W), d_model=lay.d_model, regions=regions))


# --- the dense reference --------------------------------------------------------------------------
class _Shared:
    def __init__(self, seq_len):
        self.seq_len = seq_len

    def check_len(self, n):
        assert n == self.seq_len


class DenseReference:
    """Stands in for a block's installed topology: dense per-type masks, the documented mix."""

    def __init__(self, topology, tokens):
        idx = torch.tensor(tokens.token_index)
        lay = tokens.layout
        self.shared = _Shared(tokens.seq_len)
        self.per_fn = {}
        for c in topology.connections:
            fn = topology.resolve_fn(c, lay)
            w = CanvasTopology(connections=[c]).to_attention_mask(lay).double()[idx][:, idx]
            self.per_fn.setdefault(fn, []).append((float(c.weight), w))

    def attend(self, q, k, v, *, beta=1.0, dropout_p=0.0, rows=None):
        B, H, S, d = q.shape
        sel = torch.arange(S) if rows is None else rows.cpu()
        acc = torch.zeros(B, H, S, d, dtype=torch.float64)
        den = torch.zeros(S, dtype=torch.float64)
        for fn, conns in self.per_fn.items():
            W = torch.stack([w[sel][:, sel] for _, w in conns]).amax(0)
            Wp = sum(cw * (w[sel][:, sel] > 0).any(1).double() for cw, w in conns)
            logits = beta * (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(d)
            logits = logits + torch.where(W > 0, W.clamp_min(1e-300).log(), torch.full_like(W, -math.inf))
            has = (W > 0).any(1)
            p = torch.where(has[:, None], logits, torch.zeros_like(logits)).softmax(-1) * has[:, None]
            acc = acc + Wp[:, None] * (p @ v.double())
            den = den + Wp
        out = torch.where(den[:, None] > 0, acc / den.clamp_min(1e-300)[:, None], torch.zeros_like(acc))
        return out.to(q.dtype).transpose(1, 2)

    def extra(self, x, rows=None):
        return None


def with_reference(ad, m, topology, tokens):
    ref = DenseReference(topology, tokens)
    saved = [t.canvas_topology for t in ad.attention_targets(m)]
    for t in ad.attention_targets(m):
        t.canvas_topology = ref
    return saved


def restore(ad, m, saved):
    for t, s in zip(ad.attention_targets(m), saved):
        t.canvas_topology = s


def forward_and_grads(kind, m, kw):
    x = first_input(kind, kw).detach().clone().requires_grad_(True)
    kw = dict(kw, **({"x": x} if kind == "vit" else {"hidden_states": x}))
    out = run(kind, m, kw)
    w = next(p for n, p in m.named_parameters() if "qkv.weight" in n or "to_q.weight" in n)
    gx, gw = torch.autograd.grad(out.pow(2).sum(), [x, w], allow_unused=True)
    return out.detach(), gx, torch.zeros_like(w) if gw is None else gw


# --- strategies ---------------------------------------------------------------------------------
OFFSET = st.one_of(st.none(), st.integers(-2, 2))


@st.composite
def topologies(draw, regions=("top", "bottom", "extra"), types=("cross_attention", "self_attention")):
    n = draw(st.integers(1, 5))
    conns = []
    for _ in range(n):
        conns.append(Connection(
            draw(st.sampled_from(regions)), draw(st.sampled_from(regions)),
            weight=draw(st.sampled_from([0.5, 1.0, 2.5])), t_src=draw(OFFSET), t_dst=draw(OFFSET),
            fn=draw(st.sampled_from(types)),
            temporal_fill=draw(st.sampled_from([TemporalFill.HOLD, TemporalFill.DROP, TemporalFill.INTERPOLATE]))))
    return CanvasTopology(connections=conns)


def _check_against_reference(kind, dtype, topology, period, grads, kernel=None):
    m = make(kind, dtype)
    kw = inputs(kind, dtype)
    graft_looped_blocks(m, max_loops=2, freeze="none")
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, kw), period)
    opts = {"block_size": 8} if kernel == "sparse" else None
    inst = ad.install_topology(m, topology, tokens, kernel=kernel, kernel_options=opts)
    if kernel is not None:
        assert all(kernel in k or "sdpa" in k for k in inst.describe_kernels().values())
    # float64: the reference kernel keeps its log w biases in float32 (relative error ~1e-8)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    if grads:
        got = forward_and_grads(kind, m, kw)
        saved = with_reference(ad, m, topology, tokens)
        want = forward_and_grads(kind, m, kw)
        restore(ad, m, saved)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, **tol)
    else:
        with torch.no_grad():
            got = run(kind, m, kw)
            with_reference(ad, m, topology, tokens)
            want = run(kind, m, kw)
        torch.testing.assert_close(got, want, **tol)


def causal_temporal(regions):
    conns = [Connection(a, b, t_src=0, t_dst=dt) for a in regions for b in regions for dt in (0, -1)]
    return CanvasTopology(connections=conns)
