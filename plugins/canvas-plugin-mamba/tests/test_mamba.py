"""canvas-plugin-mamba: the PyTorch selective scan against a naive recurrence, causality,
cross-length reads, masks, the plugin hooks and (on CUDA with mamba-ssm) the fused kernel."""

from __future__ import annotations

import importlib
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from canvas_plugin_mamba.module import MambaAttention
from canvas_plugin_mamba.scan import selective_scan_torch, selective_states
from hypothesis import given, settings
from hypothesis import strategies as st

DT = torch.float64


def _naive_scan(u, delta, A, B, C, D, z):
    """Step-by-step S6 recurrence, one (batch, channel) at a time."""
    Bt, E, L = u.shape
    y = torch.zeros(Bt, E, L, dtype=DT)
    for b in range(Bt):
        for e in range(E):
            h = torch.zeros(A.shape[1], dtype=DT)
            for t in range(L):
                h = torch.exp(delta[b, e, t] * A[e]) * h + delta[b, e, t] * B[b, :, t] * u[b, e, t]
                y[b, e, t] = (C[b, :, t] * h).sum() + D[e] * u[b, e, t]
    return y * F.silu(z)


@settings(max_examples=25, deadline=None)
@given(
    Bt=st.integers(1, 2),
    E=st.integers(1, 4),
    N=st.integers(1, 4),
    L=st.integers(1, 9),
    chunk=st.sampled_from([None, 1, 2, 3]),
    seed=st.integers(0, 10**6),
)
def test_torch_scan_matches_naive_recurrence(Bt, E, N, L, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(Bt, E, L, generator=g, dtype=DT)
    delta = F.softplus(torch.randn(Bt, E, L, generator=g, dtype=DT))
    A = -torch.rand(E, N, generator=g, dtype=DT) * 3
    B = torch.randn(Bt, N, L, generator=g, dtype=DT)
    C = torch.randn(Bt, N, L, generator=g, dtype=DT)
    D = torch.randn(E, generator=g, dtype=DT)
    z = torch.randn(Bt, E, L, generator=g, dtype=DT)
    ref = _naive_scan(u, delta, A, B, C, D, z)
    assert torch.allclose(selective_scan_torch(u, delta, A, B, C, D=D, z=z), ref, atol=1e-10)
    states = selective_states(u, delta, A, B, chunk=chunk)
    y = torch.einsum("blen,bnl->bel", states, C) + D[:, None] * u
    assert torch.allclose(y * F.silu(z), ref, atol=1e-10)


def _module(**kw):
    torch.manual_seed(0)
    return MambaAttention(8, 2, d_state=4, **kw).double()


def _naive_module(m, q, k, v):
    """The module's documented maths with explicit loops (no selective_states)."""
    Bt, Nq, _ = q.shape
    Nk = k.shape[1]
    x = m.in_proj(v)
    u = F.silu(m.conv1d(x.transpose(1, 2))[..., :Nk])  # (B, E, L)
    # the conv is causal: recompute it by hand for position t from inputs <= t
    w = m.conv1d.weight[:, 0]  # (E, K)
    K = w.shape[1]
    u_ref = torch.zeros_like(u)
    for t in range(Nk):
        acc = m.conv1d.bias.clone()
        for s in range(K):
            if t - (K - 1) + s >= 0:
                acc = acc + w[:, s] * x[:, t - (K - 1) + s]
        u_ref[:, :, t] = F.silu(acc)
    assert torch.allclose(u, u_ref, atol=1e-12)
    dt, Bs = m.x_proj(k).split([m.dt_rank, m.d_state], -1)
    delta = F.softplus(m.dt_proj(dt))  # (B, L, E)
    A = -torch.exp(m.A_log)
    C = m.c_proj(q)
    z = m.z_proj(q)
    out = torch.zeros(Bt, Nq, m.d_inner, dtype=DT)
    for b in range(Bt):
        hs = []
        h = torch.zeros(m.d_inner, m.d_state, dtype=DT)
        for t in range(Nk):
            h = (
                torch.exp(delta[b, t][:, None] * A) * h
                + delta[b, t][:, None] * Bs[b, t][None] * u_ref[b, :, t][:, None]
            )
            hs.append(h)
        for i in range(Nq):
            p = -(-(i + 1) * Nk // Nq) - 1
            if p >= 0:
                out[b, i] = ((hs[p] @ C[b, i]) + m.D * u_ref[b, :, p]) * F.silu(z[b, i])
    has = torch.tensor([-(-(i + 1) * Nk // Nq) - 1 >= 0 for i in range(Nq)])[None, :, None]
    return m.out_proj(out) * has


@pytest.mark.parametrize("Nq,Nk", [(6, 6), (1, 5), (3, 7), (7, 3), (1, 1)])
def test_module_matches_documented_maths(Nq, Nk):
    m = _module()
    g = torch.Generator().manual_seed(Nq * 10 + Nk)
    q, k, v = (torch.randn(2, n, 8, generator=g, dtype=DT) for n in (Nq, Nk, Nk))
    assert torch.allclose(m(q, k, v), _naive_module(m, q, k, v), atol=1e-10)
    # kernel='auto' on the CPU: the compiled scan where it builds, else the PyTorch scan
    from canvas_plugin_mamba import cpu_kernel

    assert m.kernel_used == ("mamba_cpu" if cpu_kernel.available() else "mamba_torch")
    m.kernel = "mamba_torch"
    assert torch.allclose(m(q, k, v), _naive_module(m, q, k, v), atol=1e-10)
    assert m.kernel_used == "mamba_torch"


def test_causality():
    m = _module()
    q, k, v = (torch.randn(2, 7, 8, dtype=DT) for _ in range(3))
    out = m(q, k, v)
    k2, v2 = k.clone(), v.clone()
    k2[:, 5:] += 1.0
    v2[:, 5:] -= 1.0
    out2 = m(q, k2, v2)
    assert torch.allclose(out[:, :5], out2[:, :5], atol=1e-12)
    assert not torch.allclose(out[:, 5:], out2[:, 5:])


def test_masks_and_empty():
    m = _module()
    q, k, v = (torch.randn(2, 5, 8, dtype=DT) for _ in range(3))
    mask = torch.ones(5, 5, dtype=torch.bool)
    mask[3] = False
    out = m(q, k, v, key_mask=mask)
    assert torch.isfinite(out).all() and (out[:, 3] == 0).all()
    # a key nobody may see is skipped: same as if its delta and input were zero
    keym = torch.tensor([True, False, True, True, True])
    out = m(q, k, v, key_mask=keym)
    assert torch.isfinite(out).all()
    v3 = v.clone()
    v3[:, 1] += 5.0
    k3 = k.clone()
    k3[:, 1] -= 5.0
    assert torch.allclose(m(q, k3, v3, key_mask=keym)[:, 0], out[:, 0])
    assert (m(q, k[:, :0], v[:, :0]) == 0).all()
    for dtype in (torch.float32, torch.bfloat16):
        mm = MambaAttention(8, 2).to(dtype)
        o = mm(q.to(dtype), k.to(dtype), v.to(dtype))
        assert o.dtype == dtype and torch.isfinite(o).all()


def test_bad_config():
    from canvas_core.errors import CanvasTypeError, ShapeError, UnavailableError

    with pytest.raises(ShapeError):
        MambaAttention(10, 3)
    with pytest.raises(CanvasTypeError, match="kernel"):
        MambaAttention(8, 2, kernel="triton")
    with pytest.raises(CanvasTypeError, match="d_state"):
        MambaAttention(8, 2, d_state=0)
    if not torch.cuda.is_available():
        with pytest.raises(UnavailableError, match="mamba-ssm"):
            MambaAttention(8, 2, kernel="mamba_ssm")(*(torch.randn(1, 3, 8) for _ in range(3)))


def test_hooks_register_lazily():
    from canvas_plugin_mamba import plugin

    class Rec:
        def __init__(self):
            self.added = {}

        def add(self, name, factory, **meta):
            self.added[name] = (factory, meta)

    r = Rec()
    plugin.canvas_register_attention(r)
    plugin.canvas_register_kernels(r)
    assert r.added["mamba"][0] == "canvas_plugin_mamba.module:MambaAttention"
    assert r.added["mamba"][1]["complexity"] == "O(N)"
    ssm = r.added["mamba_ssm"][1]
    assert (
        ssm["requires"] == ("mamba_ssm",) and ssm["devices"] == ("cuda",) and ssm["priority"] == 10
    )
    assert r.added["mamba_torch"][1]["supports"] == ("mamba",)
    for factory, _ in r.added.values():
        mod, obj = factory.split(":")
        assert callable(getattr(importlib.import_module(mod), obj))


def test_conformance_suite():
    testing = pytest.importorskip("canvas_core.testing")
    testing.check_attention_type("mamba", strict=True)
    testing.check_attention_type("mamba", strict=True, dtype="float64", kernel="mamba_torch")


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("mamba_ssm") is None,
    reason="needs CUDA and the mamba-ssm package (pip install 'canvas-plugin-mamba[cuda]')",
)
def test_mamba_ssm_kernel_matches_torch_scan():
    torch.manual_seed(0)
    m = MambaAttention(64, 4).cuda()
    q, k, v = (torch.randn(2, 33, 64, device="cuda") for _ in range(3))
    m.kernel = "mamba_ssm"
    fast = m(q, k, v)
    assert m.kernel_used == "mamba_ssm"
    m.kernel = "mamba_torch"
    ref = m(q, k, v)
    assert torch.allclose(fast, ref, atol=1e-4, rtol=1e-3)


def test_checkpoint_of_another_expand_names_the_fix(tmp_path):
    """A state saved with expand=2 (the earlier default) loaded into a default (expand=1) module:
    a CheckpointError naming expand=2, from load_state_dict and from load_canvas_checkpoint."""
    from canvas_core import CanvasAttention, create_attention, load_canvas_checkpoint, save_canvas_checkpoint
    from canvas_core.errors import CheckpointError
    from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection

    old, new = MambaAttention(8, 2, expand=2), MambaAttention(8, 2)
    with pytest.raises(CheckpointError, match=r"expand=2"):
        new.load_state_dict(old.state_dict())
    new.load_state_dict(MambaAttention(8, 2).state_dict())  # same expand: loads
    layout = CanvasLayout(T=2, spatial_shape=(2, 2), d_model=8, regions={"a": (0, 2, 0, 2, 0, 2)})
    topo = CanvasTopology(connections=[Connection("a", "a", fn="mamba")])
    schema = CanvasSchema(layout=layout, topology=topo)
    saved = CanvasAttention(topo, layout, n_heads=2,
                            attention_factory=lambda f, **kw: create_attention(f, expand=2, **kw))
    path = save_canvas_checkpoint(saved, tmp_path / "old.safetensors", schema)
    layer = CanvasAttention(topo, layout, n_heads=2)
    with pytest.raises(CheckpointError, match=r"has shape \(16, 16\).*build it with expand=2"):
        load_canvas_checkpoint(layer, path, schema)
    with pytest.raises(CheckpointError, match=r"mamba module 'fn_modules.mamba'.*expand=2"):
        layer.load_state_dict(saved.state_dict())
