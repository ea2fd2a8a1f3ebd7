"""Topologies inside real backbones run the compiled plan (issue 12).

Tiny diffusers CogVideoX / Mochi and timm ViT models with random weights.  The reference is the
dense definition, written out here with per-connection ``to_attention_mask`` matrices gathered to
the token order (what ``install_topology`` used to install as an ``(S, S)`` bias): per fn type one
softmax over the union of linked keys with ``log w`` biases, the types mixed per query by
``W_f(p)``, zero for a query with no key.  The reference replaces only the attention core inside
the very same processors, so both runs share the backbone's projections, norms and RoPE.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canvas_core.errors import BackboneError, CanvasError, ShapeError
from canvas_core.looping import get_adapter, graft_looped_blocks, load_loop_checkpoint, save_loop_checkpoint
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


@pytest.mark.parametrize("kind", ["cogvideox", "mochi", "vit"])
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topology=topologies(), period=st.sampled_from([1, 2]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_plan_equals_dense_reference_forward(kind, topology, period, dtype):
    _check_against_reference(kind, dtype, topology, period, grads=False)


@pytest.mark.parametrize("kind", ["cogvideox", "mochi", "vit"])
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topology=topologies(), period=st.sampled_from([1, 2]))
def test_plan_equals_dense_reference_gradients(kind, topology, period):
    _check_against_reference(kind, torch.float64, topology, period, grads=True)


@pytest.mark.parametrize("kernel", ["segments", "sparse", "dense"])
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["cogvideox", "mochi", "vit"]), topology=topologies(), period=st.sampled_from([1, 2]),
       grads=st.booleans())
def test_every_reference_kernel_mode_equals_dense_reference(kernel, kind, topology, period, grads):
    """The tiny models have few tokens, where the automatic choice is the dense mode: force each
    mode of the reference kernel (the sparse one with 8-token blocks)."""
    _check_against_reference(kind, torch.float64, topology, period, grads=grads, kernel=kernel)


def causal_temporal(regions):
    conns = [Connection(a, b, t_src=0, t_dst=dt) for a in regions for b in regions for dt in (0, -1)]
    return CanvasTopology(connections=conns)


@pytest.mark.parametrize("kind", ["cogvideox", "mochi", "vit"])
def test_edge_cases_match_reference(kind):
    """Queries with no key (isolated region / a connection to frames that do not exist), a single
    region, and a causal-temporal topology."""
    for top in (
        CanvasTopology(connections=[Connection("top", "top", t_src=0, t_dst=-5, temporal_fill=TemporalFill.DROP)]),
        CanvasTopology(connections=[Connection("extra", "extra")]),
        causal_temporal(["top", "bottom"]),
    ):
        _check_against_reference(kind, torch.float64, top, 1, grads=False)


@pytest.mark.parametrize("kind", ["cogvideox", "mochi", "vit"])
def test_no_key_gives_zero_attention_not_nan(kind):
    m = make(kind)
    kw = inputs(kind)
    ad = get_adapter(m) if False else None
    graft_looped_blocks(m, max_loops=2)
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, kw), 1)
    ad.install_topology(m, CanvasTopology(connections=[Connection("top", "top", t_src=0, t_dst=-9,
                                                                  temporal_fill=TemporalFill.DROP)]), tokens)
    with torch.no_grad():
        out = run(kind, m, kw)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind", ["cogvideox", "mochi", "vit"])
def test_dense_topology_equals_no_topology_and_removal_restores(kind):
    m = make(kind)
    kw = inputs(kind)
    with torch.no_grad():
        plain = run(kind, m, kw)
    graft_looped_blocks(m, max_loops=3)
    ad = get_adapter(m)
    tokens = ad.token_layout(m, kw)
    inst = ad.install_topology(m, CanvasTopology.dense(list(tokens.layout.regions)), tokens)
    assert all("sdpa" in k for k in inst.describe_kernels().values())
    with torch.no_grad():
        assert torch.equal(run(kind, m, kw), plain)
    ad.install_topology(m, CanvasTopology(connections=[Connection(r, r) for r in tokens.layout.regions]), tokens)
    with torch.no_grad():
        assert not torch.allclose(run(kind, m, kw), plain)
    ad.remove_topology(m)
    assert ad.installed_topology(m) is None
    with torch.no_grad():
        assert torch.equal(run(kind, m, kw), plain)


NON_SOFTMAX = ["pooling", "gated", "perceiver", "mamba", "rwkv", "hyena", "canvas_read", "canvas_write"]


@pytest.mark.parametrize("kind", ["cogvideox", "mochi", "vit"])
def test_identity_at_init_with_non_softmax_types_at_every_loop_count(kind, tmp_path):
    m = make(kind)
    kw = inputs(kind)
    with torch.no_grad():
        plain = run(kind, m, kw)
    blocks, head = graft_looped_blocks(m, max_loops=4, freeze="full")
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, kw), 1)
    before = sum(p.numel() for b in blocks for p in b.loop_parameters())
    conns = [Connection(a, b) for a in ("top", "bottom", "extra") for b in ("top", "bottom", "extra")]
    conns += [Connection("top", "bottom", fn=f) for f in NON_SOFTMAX[:4]]
    dt = dict(t_src=0, t_dst=-1) if kind != "vit" else {}  # the ViT canvas has one frame
    conns += [Connection("bottom", "top", fn=f, **dt) for f in NON_SOFTMAX[4:]]
    inst = ad.install_topology(m, CanvasTopology(connections=conns), tokens)
    assert set(inst.module_types) == set(NON_SOFTMAX)
    for n in (1, 2, 3, 4):
        for b in blocks:
            b.set_loops(n)
        with torch.no_grad():
            assert torch.equal(run(kind, m, kw), plain), n
    # the modules are loop parameters: trainable under freeze="full", counted, saved, loaded
    extra = [p for b in blocks for n, p in b.named_loop_parameters() if n.startswith("canvas_fn.")]
    assert extra and all(p.requires_grad for p in extra)
    assert sum(p.numel() for b in blocks for p in b.loop_parameters()) == before + sum(p.numel() for p in extra)
    out = run(kind, m, kw)
    out.pow(2).mean().backward()
    gates = [p for b in blocks for n, p in b.named_loop_parameters() if n.endswith(".gate")]
    assert gates and all(g.grad is not None for g in gates) and any(g.grad.abs().sum() > 0 for g in gates)
    with torch.no_grad():
        for g in gates:
            g.fill_(0.3)
    path = tmp_path / "loops.safetensors"
    save_loop_checkpoint(blocks, head, str(path))
    with torch.no_grad():
        want = run(kind, m, kw)
        for g in gates:
            g.zero_()
    load_loop_checkpoint(blocks, head, str(path))
    with torch.no_grad():
        assert torch.equal(run(kind, m, kw), want)
        assert not torch.equal(want, plain)


def test_pooling_is_its_own_operator_not_softmax():
    kind = "vit"
    m = make(kind, torch.float64)
    kw = inputs(kind, torch.float64)
    blocks, _ = graft_looped_blocks(m, max_loops=1)
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, kw), 1)
    soft = [Connection("top", "top"), Connection("bottom", "bottom"), Connection("extra", "extra")]
    top = CanvasTopology(connections=soft + [Connection("top", "bottom", fn="pooling")])
    inst = ad.install_topology(m, top, tokens)
    assert inst.softmax_types == ("cross_attention",) and inst.module_types == ("pooling",)
    assert "pooling" not in inst.runner.soft_fns
    # the module output of the pooling group, with its gate opened, against the module run by hand
    target = ad.attention_targets(m)[0]
    bt = target.canvas_topology
    gm = bt.modules["pooling"]
    with torch.no_grad():
        gm.gate.fill_(1.0)
        x = torch.randn(2, tokens.seq_len, 32, dtype=torch.float64)
        got = bt.extra(x)
        idx = torch.tensor(tokens.token_index)
        mask = CanvasTopology(connections=[top.connections[-1]]).to_attention_mask(tokens.layout)[idx][:, idx] > 0
        q = torch.nonzero(mask.any(1)).flatten()
        k = torch.nonzero(mask.any(0)).flatten()
        # coefficient: W_pooling / (W_softmax + W_pooling) = 1/2 on every top query
        want = torch.zeros_like(x)
        want[:, q] = 0.5 * gm.module(x[:, q], x[:, k], x[:, k], key_mask=mask[q][:, k])
        torch.testing.assert_close(got, want)
        # and it is not what softmax attention over the same keys would give
        soft_ref = torch.zeros_like(x)
        soft_ref[:, q] = 0.5 * torch.nn.functional.scaled_dot_product_attention(x[:, q], x[:, k], x[:, k])
        assert not torch.allclose(got, soft_ref)


# --- bad inputs ------------------------------------------------------------------------------------
def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("kind", ["cogvideox", "mochi", "vit"])
def test_bad_inputs_raise_canvas_errors_and_leave_the_model_unchanged(kind):
    m = make(kind)
    kw = inputs(kind)
    blocks, _ = graft_looped_blocks(m, max_loops=2)
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, kw), 1)
    good = causal_temporal(["top", "bottom"])
    ad.install_topology(m, good, tokens)
    with torch.no_grad():
        before = run(kind, m, kw)
    keys = set(m.state_dict())
    installed = ad.installed_topology(m)
    lay = tokens.layout
    bad = [
        CanvasTopology(connections=[Connection("top", "nowhere")]),  # region not on the layout
        CanvasTopology(connections=[Connection("top", "bottom", fn="poolng")]),  # unknown type
    ]
    # a region that holds no token: the padding positions of the extra rows (none for this grid)
    for topo in bad:
        with pytest.raises(CanvasError) as e:
            ad.install_topology(m, topo, tokens)
        assert "#0" in str(e.value)
    # a layout of another grid
    with pytest.raises(BackboneError):
        ad.token_layout(m, kw, layout=CanvasLayout(T=lay.T + 1, spatial_shape=tuple(lay.spatial_shape),
                                                   d_model=lay.d_model, regions={"a": (0, 1, 0, 1, 0, 1)}))
    # a type that cannot run inside this backbone
    if kind == "mochi":
        with pytest.raises(BackboneError, match=r"#1 'extra' -> 'top'.*context stream"):
            ad.install_topology(m, CanvasTopology(connections=[Connection("top", "top"),
                                                               Connection("extra", "top", fn="pooling")]), tokens)
    assert ad.installed_topology(m) is installed and set(m.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(run(kind, m, kw), before)
    # a call whose sequence length differs from the installed layout
    if kind == "vit":
        other = dict(x=torch.randn(1, 3, 48, 48))
    elif kind == "cogvideox":
        other = dict(kw, hidden_states=kw["hidden_states"][:, :2], image_rotary_emb=None)
    else:
        other = dict(kw, hidden_states=kw["hidden_states"][:, :, :1])
    with pytest.raises(ShapeError, match="installed for"):
        with torch.no_grad():
            run(kind, m, other)


def test_non_softmax_type_over_mochi_text_is_refused_before_any_change():
    kind = "mochi"
    m = make(kind)
    kw = inputs(kind)
    graft_looped_blocks(m, max_loops=2)
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, kw), 1)
    keys = set(m.state_dict())
    with pytest.raises(BackboneError, match="cannot run inside 'mochi'"):
        ad.install_topology(m, CanvasTopology(connections=[Connection("top", "extra", fn="gated")]), tokens)
    assert ad.installed_topology(m) is None and set(m.state_dict()) == keys


def test_region_without_tokens_is_refused():
    m = make("vit")
    graft_looped_blocks(m, max_loops=2)
    ad = get_adapter(m)
    tokens = ad.token_layout(m)
    lay = tokens.layout
    H, W = tuple(lay.spatial_shape)
    gh = lay.regions["patches"].bounds[3]
    # the prefix rows hold 3 tokens (CLS + 2 registers) in a row of W=4 positions: the last is empty
    mine = CanvasLayout(T=1, spatial_shape=(H, W), d_model=lay.d_model,
                        regions={"patches": (0, 1, 0, gh, 0, W), "pad": (0, 1, H - 1, H, W - 1, W)})
    with pytest.raises(BackboneError, match="'pad' covers no token"):
        ad.install_topology(m, CanvasTopology(connections=[Connection("patches", "pad")]), tokens.with_layout(mine))
    assert ad.installed_topology(m) is None


# --- CUDA: the kernel the compiler resolves for the GPU (FlexAttention / xformers when present) ---
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["cogvideox", "mochi", "vit"])
def test_cuda_plan_kernel_equals_dense_reference(kind):
    m = make(kind).to("cuda")
    kw = {k: (v.to("cuda") if torch.is_tensor(v) else v) for k, v in inputs(kind).items()}
    if kind == "cogvideox":
        kw["image_rotary_emb"] = tuple(t.to("cuda") for t in kw["image_rotary_emb"])
    graft_looped_blocks(m, max_loops=2)
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, kw), 2)
    top = CanvasTopology(connections=[
        Connection("top", "top", t_src=0, t_dst=0), Connection("top", "bottom", t_src=0, t_dst=-1, weight=2.0),
        Connection("bottom", "top", fn="self_attention", weight=0.5), Connection("extra", "extra")])
    inst = ad.install_topology(m, top, tokens)
    res = inst.plan.resolutions
    assert all(r.device.startswith("cuda") for r in res.values())
    with torch.no_grad():
        got = run(kind, m, kw)
        with_reference(ad, m, top, tokens)
        want = run(kind, m, kw)
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-4)
    # gradients flow through the resolved CUDA kernel
    ad.install_topology(m, top, tokens)
    run(kind, m, kw).float().pow(2).mean().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.parameters())


def test_cogvideox_type_is_the_backbones_own_attention():
    """fn 'cogvideox' inside CogVideoX runs as the backbone's softmax attention: the same output as
    the same connections typed cross_attention (one group either way)."""
    kind = "cogvideox"
    m = make(kind)
    kw = inputs(kind)
    graft_looped_blocks(m, max_loops=2)
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, kw), 1)

    def topo(fn):
        return CanvasTopology(connections=[Connection("top", "top", t_src=0, t_dst=-1, fn=fn),
                                           Connection("bottom", "top", fn=fn), Connection("extra", "extra", fn=fn)])

    outs = []
    for fn in ("cross_attention", "cogvideox"):
        inst = ad.install_topology(m, topo(fn), tokens)
        assert inst.softmax_types == (fn,) and not inst.module_types
        with torch.no_grad():
            outs.append(run(kind, m, kw))
    assert torch.equal(outs[0], outs[1])


class _WideOnly(torch.nn.Module):
    """A plugin type that only builds at width >= 64 (the tiny backbones are 32 / 16 wide)."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        if d_model < 64:
            raise ValueError(f"needs d_model >= 64, got {d_model}")
        self.lin = torch.nn.Linear(d_model, d_model)

    def forward(self, queries, keys, values, key_mask=None):
        return self.lin(queries)


class _MeanOfKeys(torch.nn.Module):
    """A plugin type without key_mask (runs once per key set under the calling contract)."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.lin = torch.nn.Linear(d_model, d_model)

    def forward(self, queries, keys, values):
        return self.lin(values.mean(dim=1, keepdim=True)).expand_as(queries)


@pytest.mark.parametrize("kind", ["cogvideox", "vit"])
def test_plugin_types_run_gated_or_are_refused_naming_the_connection(kind):
    import canvas_core.plugins as P

    P.register_attention("h2_wide_only", _WideOnly)
    P.register_attention("h2_mean_of_keys", _MeanOfKeys)
    try:
        m = make(kind)
        kw = inputs(kind)
        with torch.no_grad():
            plain = run(kind, m, kw)
        blocks, _ = graft_looped_blocks(m, max_loops=3)
        ad = get_adapter(m)
        tokens = user_layout(ad.token_layout(m, kw), 1)
        dense = [Connection(a, b) for a in ("top", "bottom", "extra") for b in ("top", "bottom", "extra")]
        keys = set(m.state_dict())
        with pytest.raises(BackboneError, match=r"#9 'top' -> 'bottom' \(fn 'h2_wide_only'\).*needs d_model >= 64"):
            ad.install_topology(m, CanvasTopology(connections=dense + [Connection("top", "bottom", fn="h2_wide_only")]),
                                tokens)
        assert ad.installed_topology(m) is None and set(m.state_dict()) == keys
        inst = ad.install_topology(m, CanvasTopology(connections=dense + [
            Connection("top", "bottom", fn="h2_mean_of_keys"), Connection("bottom", "top", fn="h2_mean_of_keys")]), tokens)
        assert inst.module_types == ("h2_mean_of_keys",)
        with torch.no_grad():
            assert torch.equal(run(kind, m, kw), plain)  # gate at 0
            for b in blocks:
                for n, p in b.named_loop_parameters():
                    if n.endswith(".gate"):
                        p.fill_(1.0)
            assert not torch.allclose(run(kind, m, kw), plain)
    finally:
        P.unregister_attention("h2_wide_only")
        P.unregister_attention("h2_mean_of_keys")
