"""Each builtin attention type checked against an obvious reference written here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from canvas_core.attention import (
    CopyAttention,
    CosineAttention,
    CrossAttention,
    GatedAttention,
    HyenaAttention,
    LinearAttention,
    LocalAttention,
    MixtureAttention,
    NoneAttention,
    PerceiverAttention,
    PoolingAttention,
    RandomFixedAttention,
    RWKVAttention,
    SigmoidAttention,
    SparseAttention,
    masked_softmax_attention,
)

D, H = 16, 4
DT = torch.float64


def _inputs(B=2, Nq=5, Nk=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, Nq, D, generator=g, dtype=DT),
        torch.randn(B, Nk, D, generator=g, dtype=DT),
        torch.randn(B, Nk, D, generator=g, dtype=DT),
    )


def _mk(cls, **kw):
    torch.manual_seed(0)
    return cls(D, H, **kw).to(DT)


def _heads(x):
    B, N, _ = x.shape
    return x.view(B, N, H, D // H).permute(0, 2, 1, 3)


def _ref_softmax(m, q, k, v, logits_fn, allow=None):
    """Explicit per-(b, h, i) loop: softmax over allowed keys, zeros when none."""
    Q, K, V = _heads(m.q_proj(q)), _heads(m.k_proj(k)), _heads(m.v_proj(v))
    B, _, Nq, d = Q.shape
    out = torch.zeros(B, H, Nq, d, dtype=DT)
    for b in range(B):
        for h in range(H):
            for i in range(Nq):
                keys = [j for j in range(K.shape[2]) if allow is None or allow(b, h, i, j, Q, K)]
                if not keys:
                    continue
                s = torch.stack([logits_fn(h, Q[b, h, i], K[b, h, j]) for j in keys])
                w = torch.softmax(s, 0)
                out[b, h, i] = sum(w[n] * V[b, h, j] for n, j in enumerate(keys))
    o = m.out_proj(out.permute(0, 2, 1, 3).reshape(B, Nq, D))
    has = torch.tensor(
        [
            [
                any(allow is None or allow(b, 0, i, j, Q, K) for j in range(K.shape[2]))
                for i in range(Nq)
            ]
            for b in range(B)
        ]
    )
    return o * has[..., None]


def test_functional_matches_sdpa_and_zero_rows():
    q, k, v = (torch.randn(2, 3, 4, 8, dtype=DT) for _ in range(3))
    out, has = masked_softmax_attention(q, k, v)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v))
    assert has.all()
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[1] = False
    out, has = masked_softmax_attention(q, k, v, mask=mask)
    assert (out[..., 1, :] == 0).all() and not has[..., 1, 0].any()
    out, has = masked_softmax_attention(q, k[..., :0, :], v[..., :0, :])
    assert out.shape == (2, 3, 4, 8) and (out == 0).all()


def test_cross_attention_reference():
    m = _mk(CrossAttention)
    q, k, v = _inputs()
    mask = torch.rand(5, 7, generator=torch.Generator().manual_seed(1)) > 0.4
    mask[2] = False
    ref = _ref_softmax(
        m,
        q,
        k,
        v,
        lambda h, a, b: a @ b / math.sqrt(D // H),
        lambda b, h, i, j, Q, K: bool(mask[i, j]),
    )
    assert torch.allclose(m(q, k, v, key_mask=mask), ref, atol=1e-10)
    m.beta = 3.0
    ref = _ref_softmax(m, q, k, v, lambda h, a, b: 3.0 * (a @ b) / math.sqrt(D // H))
    assert torch.allclose(m(q, k, v), ref, atol=1e-10)


def test_float_additive_mask_is_bias():
    m = _mk(CrossAttention)
    q, k, v = _inputs()
    bias = torch.randn(5, 7, dtype=DT)
    bias[0, :3] = float("-inf")
    Q, K, V = _heads(m.q_proj(q)), _heads(m.k_proj(k)), _heads(m.v_proj(v))
    logits = Q @ K.transpose(-1, -2) / math.sqrt(D // H) + bias
    ref = m.out_proj((torch.softmax(logits, -1) @ V).permute(0, 2, 1, 3).reshape(2, 5, D))
    assert torch.allclose(m(q, k, v, key_mask=bias), ref, atol=1e-10)


def test_cosine_attention_reference():
    m = _mk(CosineAttention)
    with torch.no_grad():
        m.log_scale.copy_(torch.log(torch.tensor([2.0, 5.0, 10.0, 20.0])))
    q, k, v = _inputs()
    ref = _ref_softmax(
        m, q, k, v, lambda h, a, b: [2.0, 5.0, 10.0, 20.0][h] * (a @ b) / (a.norm() * b.norm())
    )
    assert torch.allclose(m(q, k, v), ref, atol=1e-9)


def test_sigmoid_attention_reference():
    m = _mk(SigmoidAttention)
    q, k, v = _inputs()
    mask = torch.rand(2, 5, 7, generator=torch.Generator().manual_seed(3)) > 0.5
    Q, K, V = _heads(m.q_proj(q)), _heads(m.k_proj(k)), _heads(m.v_proj(v))
    out = torch.zeros(2, H, 5, D // H, dtype=DT)
    for b in range(2):
        for i in range(5):
            n = int(mask[b, i].sum())
            for j in range(7):
                if mask[b, i, j]:
                    s = torch.sigmoid(Q[b, :, i] @ K[b, :, j].T / math.sqrt(D // H) - math.log(n))
                    out[b, :, i] += s.diagonal()[:, None] * V[b, :, j]
    ref = m.out_proj(out.permute(0, 2, 1, 3).reshape(2, 5, D)) * mask.any(-1, keepdim=True)
    assert torch.allclose(m(q, k, v, key_mask=mask), ref, atol=1e-10)


def test_linear_attention_reference():
    m = _mk(LinearAttention)
    q, k, v = _inputs()
    phi = lambda x: F.elu(x) + 1  # noqa: E731
    Q, K, V = phi(_heads(m.q_proj(q))), phi(_heads(m.k_proj(k))), _heads(m.v_proj(v))
    for mask in (
        None,
        torch.tensor([1, 0, 1, 1, 0, 1, 1], dtype=torch.bool),
        torch.rand(5, 7, generator=torch.Generator().manual_seed(2)) > 0.5,
    ):
        allow = torch.ones(5, 7, dtype=torch.bool) if mask is None else mask.expand(5, 7)
        out = torch.zeros(2, H, 5, D // H, dtype=DT)
        for i in range(5):
            js = [j for j in range(7) if allow[i, j]]
            if js:
                num = sum((Q[:, :, i] * K[:, :, j]).sum(-1, keepdim=True) * V[:, :, j] for j in js)
                den = sum((Q[:, :, i] * K[:, :, j]).sum(-1, keepdim=True) for j in js)
                out[:, :, i] = num / den
        ref = m.out_proj(out.permute(0, 2, 1, 3).reshape(2, 5, D)) * allow.any(-1)[None, :, None]
        assert torch.allclose(m(q, k, v, key_mask=mask), ref, atol=1e-10)


def test_pooling_is_projected_masked_mean():
    m = _mk(PoolingAttention)
    q, k, v = _inputs()
    assert torch.allclose(m(q, k, v), m.out_proj(v.mean(1, keepdim=True)).expand(2, 5, D))
    mask = torch.rand(5, 7, generator=torch.Generator().manual_seed(4)) > 0.5
    mask[1] = False
    out = m(q, k, v, key_mask=mask)
    for i in range(5):
        if mask[i].any():
            assert torch.allclose(out[:, i], m.out_proj(v[:, mask[i]].mean(1)))
        else:
            assert (out[:, i] == 0).all()


def test_copy_rules():
    m = CopyAttention(D, H)
    assert not list(m.parameters())
    q, k, v = _inputs(Nq=7, Nk=7)
    assert torch.equal(m(q, k, v), v)
    for Nq, Nk in ((5, 7), (7, 3), (1, 4), (9, 2)):
        q, k, v = _inputs(Nq=Nq, Nk=Nk)
        out = m(q, k, v)
        for i in range(Nq):
            centre = (i + 0.5) / Nq  # nearest-index resampling, written out
            j = min(int(centre * Nk), Nk - 1)
            assert torch.equal(out[:, i], v[:, j])
    q, k, v = _inputs(Nq=4, Nk=4)
    mask = torch.eye(4, dtype=torch.bool)
    mask[2, 2] = False
    out = m(q, k, v, key_mask=mask)
    assert (out[:, 2] == 0).all() and torch.equal(out[:, 3], v[:, 3])


def test_none_is_zero():
    q, k, v = _inputs()
    m = NoneAttention(D, H)
    assert not list(m.parameters()) and (m(q, k, v) == 0).all()


def test_sparse_topk_reference():
    m = _mk(SparseAttention, top_k=3)
    q, k, v = _inputs()
    Q, K = _heads(m.q_proj(q)), _heads(m.k_proj(k))
    S = Q @ K.transpose(-1, -2) / math.sqrt(D // H)

    def allow(b, h, i, j, Q_, K_):
        return bool(S[b, h, i, j] >= S[b, h, i].sort(descending=True).values[2])

    ref = _ref_softmax(m, q, k, v, lambda h, a, b: a @ b / math.sqrt(D // H), allow)
    assert torch.allclose(m(q, k, v), ref, atol=1e-10)
    m.top_k = 100  # more than Nk: dense
    ref = _ref_softmax(m, q, k, v, lambda h, a, b: a @ b / math.sqrt(D // H))
    assert torch.allclose(m(q, k, v), ref, atol=1e-10)


@pytest.mark.parametrize("Nq,Nk,window", [(7, 7, 1), (7, 7, 0), (5, 9, 2), (9, 4, 1)])
def test_local_window_reference(Nq, Nk, window):
    m = _mk(LocalAttention, window=window)
    q, k, v = _inputs(Nq=Nq, Nk=Nk)

    def allow(b, h, i, j, Q, K):
        c = i if Nq == Nk else (i + 0.5) * Nk / Nq - 0.5
        return abs(j - c) <= window + 1e-9

    ref = _ref_softmax(m, q, k, v, lambda h, a, b: a @ b / math.sqrt(D // H), allow)
    assert torch.allclose(m(q, k, v), ref, atol=1e-10)


def test_random_fixed_is_fixed_and_k_sparse():
    m = _mk(RandomFixedAttention, n_random=3, seed=5)
    q, k, v = _inputs(Nq=6, Nk=10)
    s = m.pattern_scores(6, 10)
    assert torch.equal(s, m.pattern_scores(6, 10))
    chosen = s.topk(3, dim=-1).indices
    assert len({tuple(r.tolist()) for r in chosen.sort(-1).values}) > 1  # not the same keys for all
    ref = _ref_softmax(
        m,
        q,
        k,
        v,
        lambda h, a, b: a @ b / math.sqrt(D // H),
        lambda b, h, i, j, Q, K: j in chosen[i].tolist(),
    )
    assert torch.allclose(m(q, k, v), ref, atol=1e-10)
    m2 = _mk(RandomFixedAttention, n_random=3, seed=5)
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2.pattern_scores(6, 10), s)
    assert not torch.equal(_mk(RandomFixedAttention, n_random=3, seed=6).pattern_scores(6, 10), s)


def test_gated_zero_at_init_then_nonzero_after_step():
    m = _mk(GatedAttention)
    q, k, v = _inputs()
    out = m(q, k, v)
    assert (out == 0).all()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    (m(q, k, v) - torch.ones_like(out)).pow(2).mean().backward()
    opt.step()
    assert m(q, k, v).abs().max() > 0
    # the gate multiplies the cross-attention output of the same projections
    inner = CrossAttention.forward(m, q, k, v)
    gate = torch.tanh(m.gate_alpha) * torch.sigmoid(m.gate_proj(q))
    assert torch.allclose(m(q, k, v), gate * inner)


def test_perceiver_reference():
    m = _mk(PerceiverAttention, n_latents=3)
    q, k, v = _inputs()
    lat = m.latents.expand(2, 3, D)
    z = lat + _ref_softmax(m.encode, lat, k, v, lambda h, a, b: a @ b / math.sqrt(D // H))
    ref = _ref_softmax(m.decode, q, z, z, lambda h, a, b: a @ b / math.sqrt(D // H))
    assert torch.allclose(m(q, k, v), ref, atol=1e-10)


def test_mixture_soft_and_topk():
    m = _mk(MixtureAttention)
    q, k, v = _inputs()
    outs = [e(q, k, v) for e in m.experts]
    g = torch.softmax(m.router(q), -1)
    assert torch.allclose(
        m(q, k, v), sum(g[..., e : e + 1] * outs[e] for e in range(3)), atol=1e-10
    )
    m.top_k_experts = 1
    best = g.argmax(-1)
    ref = torch.stack([outs[e] for e in range(3)], -1).gather(
        -1, best[..., None, None].expand(2, 5, D, 1)
    )[..., 0]
    assert torch.allclose(m(q, k, v), ref, atol=1e-10)


# ------------------------------------------------------------------------ RWKV
def _naive_wkv(k, v, w, u, t_read, allowed_keys):
    """Direct formula of RWKV-4 WKV at position t over the allowed keys (no log-space)."""
    num = torch.zeros(k.shape[-1], dtype=DT)
    den = torch.zeros(k.shape[-1], dtype=DT)
    for i in range(t_read + 1):
        if not allowed_keys[i]:
            continue
        e = torch.exp(u + k[i]) if i == t_read else torch.exp(-(t_read - 1 - i) * w + k[i])
        num, den = num + e * v[i], den + e
    return num / den if (den > 0).all() else num * 0


def _naive_recurrence(k, v, w, u):
    """Step-by-step RWKV recurrence with plain (unstabilised) running sums."""
    a = torch.zeros(k.shape[-1], dtype=DT)
    b = torch.zeros_like(a)
    outs = []
    for t in range(k.shape[0]):
        outs.append((a + torch.exp(u + k[t]) * v[t]) / (b + torch.exp(u + k[t])))
        a = torch.exp(-w) * a + torch.exp(k[t]) * v[t]
        b = torch.exp(-w) * b + torch.exp(k[t])
    return torch.stack(outs)


@pytest.mark.parametrize("kernel", ["auto", "torch"])
@pytest.mark.parametrize("Nq,Nk", [(6, 6), (1, 5), (3, 7), (8, 4)])
def test_rwkv_matches_naive_recurrence(Nq, Nk, kernel):
    from canvas_core.attention import wkv_kernel

    m = _mk(RWKVAttention, kernel=kernel)
    q, k, v = _inputs(Nq=Nq, Nk=Nk)
    kk, vv = m.key(k), m.value(v)
    w, u = torch.exp(m.time_decay), m.time_first
    r = torch.sigmoid(m.receptance(q))
    out = torch.zeros(2, Nq, D, dtype=DT)
    has = torch.zeros(Nq, dtype=torch.bool)
    for b in range(2):
        seq = _naive_recurrence(kk[b], vv[b], w, u)
        for i in range(Nq):
            p = -(-(i + 1) * Nk // Nq) - 1  # causal read position
            if p >= 0:
                out[b, i] = seq[p]
                has[i] = True
    ref = m.output(r * out) * has[None, :, None]
    assert torch.allclose(m(q, k, v), ref, atol=1e-9)
    # auto: the compiled CPU read where it can be built here, else the PyTorch path
    compiled = kernel == "auto" and wkv_kernel.usable_for(kk, vv, w, u)
    assert m.kernel_used == ("rwkv_cpu" if compiled else "torch")


def test_rwkv_masks_shared_and_per_query():
    m = _mk(RWKVAttention)
    q, k, v = _inputs(Nq=6, Nk=6)
    kk, vv = m.key(k), m.value(v)
    w, u = torch.exp(m.time_decay), m.time_first
    r = torch.sigmoid(m.receptance(q))
    g = torch.Generator().manual_seed(7)
    shared = torch.rand(1, 1, 6, generator=g) > 0.3
    per_q = torch.rand(6, 6, generator=g) > 0.4
    for mask in (shared, per_q):
        allow = mask.expand(2, 6, 6)
        out = torch.zeros(2, 6, D, dtype=DT)
        has = torch.zeros(2, 6, 1, dtype=torch.bool)
        for b in range(2):
            for i in range(6):
                out[b, i] = _naive_wkv(kk[b], vv[b], w, u, i, allow[b, i])
                has[b, i] = bool(allow[b, i, : i + 1].any())
        ref = m.output(r * out) * has
        assert torch.allclose(m(q, k, v, key_mask=mask), ref, atol=1e-9)


def test_rwkv_scan_is_stable_for_large_keys():
    m = _mk(RWKVAttention)
    with torch.no_grad():
        m.key.weight.mul_(200.0)  # exp(k) would overflow float32 without the log-space scan
    q, k, v = _inputs(Nq=6, Nk=6)
    out = m.float()(q.float(), k.float(), v.float())
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------------ Hyena
def _direct_causal_conv(z, h):
    L = z.shape[1]
    y = torch.zeros_like(z)
    for t in range(L):
        for s in range(t + 1):
            y[:, t] += h[t - s] * z[:, s]
    return y


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("Nq,Nk", [(6, 6), (2, 5)])
def test_hyena_matches_direct_convolution(order, Nq, Nk):
    m = _mk(HyenaAttention, order=order, max_len=16)
    q, k, v = _inputs(Nq=Nq, Nk=Nk)
    h = m.filters(Nk, DT)
    d = m.skip
    z = m.v_proj(v)
    gates = m.gate_proj(k).chunk(order - 1, -1) if order > 1 else ()
    for n in range(order - 1):
        z = gates[n] * (_direct_causal_conv(z, h[n]) + d[n] * z)
    y = _direct_causal_conv(z, h[-1]) + d[-1] * z
    read = [-(-(i + 1) * Nk // Nq) - 1 for i in range(Nq)]
    yr = torch.stack([y[:, p] if p >= 0 else torch.zeros_like(y[:, 0]) for p in read], 1)
    has = torch.tensor([p >= 0 for p in read])[None, :, None]
    ref = m.out_proj(m.q_proj(q) * yr) * has
    assert torch.allclose(m(q, k, v), ref, atol=1e-9)


def test_hyena_filter_decays_and_per_query_mask():
    m = _mk(HyenaAttention, order=1, max_len=8)
    h = m.filters(64, DT)[0]
    t = torch.arange(64, dtype=DT) / 8
    assert h.shape == (64, D)
    window = torch.exp(-t[:, None] * m.decay_rates.to(DT)[None])
    assert (window[-1] < 1e-2).all()
    q, k, v = _inputs(Nq=5, Nk=5)
    mask = torch.rand(5, 5, generator=torch.Generator().manual_seed(9)) > 0.4
    z = m.v_proj(v)
    hh = m.filters(5, DT)[0]
    y = torch.zeros(2, 5, D, dtype=DT)
    for i in range(5):
        for j in range(i + 1):
            if mask[i, j]:
                y[:, i] += hh[i - j] * z[:, j] + (m.skip[0] * z[:, j] if j == i else 0)
    has = torch.stack([mask[i, : i + 1].any() for i in range(5)])[None, :, None]
    ref = m.out_proj(m.q_proj(q) * y) * has
    assert torch.allclose(m(q, k, v, key_mask=mask), ref, atol=1e-9)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, None])
def test_wkv_scan_chunks_match_naive_recurrence(chunk):
    from canvas_core.attention.recurrent import wkv_scan

    g = torch.Generator().manual_seed(11)
    k = torch.randn(2, 11, 6, generator=g, dtype=DT) * 3
    v = torch.randn(2, 11, 6, generator=g, dtype=DT)
    w, u = torch.rand(6, generator=g, dtype=DT), torch.randn(6, generator=g, dtype=DT)
    ref = torch.stack([_naive_recurrence(k[b], v[b], w, u) for b in range(2)])
    assert torch.allclose(wkv_scan(k, v, w, u, chunk=chunk), ref, atol=1e-10)
    key_ok = torch.rand(2, 11, generator=g) > 0.3
    key_ok[:, 0] = False
    out = wkv_scan(k, v, w, u, key_ok, chunk=chunk)
    for b in range(2):
        for t in range(11):
            assert torch.allclose(out[b, t], _naive_wkv(k[b], v[b], w, u, t, key_ok[b]), atol=1e-10)
