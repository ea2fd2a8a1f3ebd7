"""Properties every builtin attention type must have: shapes, dtypes, masks, no NaN, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import canvas_core.attention as A
from canvas_core.errors import CanvasError, CanvasTypeError, ShapeError

ALL = [
    "CrossAttention",
    "LinearAttention",
    "CosineAttention",
    "SigmoidAttention",
    "GatedAttention",
    "PerceiverAttention",
    "PoolingAttention",
    "CopyAttention",
    "SparseAttention",
    "LocalAttention",
    "NoneAttention",
    "RandomFixedAttention",
    "MixtureAttention",
    "RWKVAttention",
    "HyenaAttention",
]
D, H = 8, 2


def _module(name, dtype=torch.float32):
    torch.manual_seed(0)
    m = getattr(A, name)(D, H).to(dtype)
    if name == "GatedAttention":  # open the gate so the outputs are non-trivial
        with torch.no_grad():
            m.gate_alpha.fill_(1.0)
    return m


def test_exports():
    assert set(ALL) <= set(A.__all__)


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=12, deadline=None)
@given(
    B=st.integers(1, 3),
    Nq=st.integers(1, 6),
    Nk=st.integers(0, 6),
    seed=st.integers(0, 10**6),
    kind=st.sampled_from(["2d", "3d", "keys", "float"]),
)
def test_masked_rows_are_zero_and_finite(name, B, Nq, Nk, seed, kind):
    m = _module(name)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Nq, D, generator=g, requires_grad=True)
    k = torch.randn(B, Nk, D, generator=g, requires_grad=True)
    v = torch.randn(B, Nk, D, generator=g, requires_grad=True)
    if kind == "2d":
        mask = torch.rand(Nq, Nk, generator=g) > 0.5
        empty = ~mask.any(-1)[None].expand(B, Nq)
    elif kind == "3d":
        mask = torch.rand(B, Nq, Nk, generator=g) > 0.5
        empty = ~mask.any(-1)
    elif kind == "keys":
        mask = torch.rand(B, 1, Nk, generator=g) > 0.5
        empty = ~mask.any(-1).expand(B, Nq)
    else:
        mask = torch.where(
            torch.rand(Nq, Nk, generator=g) > 0.5,
            torch.randn(Nq, Nk, generator=g),
            torch.tensor(float("-inf")),
        )
        empty = ~(mask > float("-inf")).any(-1)[None].expand(B, Nq)
    out = m(q, k, v, key_mask=mask)
    assert out.shape == (B, Nq, D) and out.dtype == q.dtype
    assert torch.isfinite(out).all()
    assert (out[empty] == 0).all()
    if out.requires_grad:
        out.sum().backward()
    for t in (q, k, v):
        assert t.grad is None or torch.isfinite(t.grad).all()
    for p in m.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtypes_and_empty_keys(name, dtype):
    m = _module(name, dtype)
    q, k = torch.randn(2, 5, D, dtype=dtype), torch.randn(2, 4, D, dtype=dtype)
    out = m(q, k, k)
    assert out.shape == (2, 5, D) and out.dtype == dtype and out.device == q.device
    assert torch.isfinite(out).all()
    empty = m(q, k[:, :0], k[:, :0])
    assert empty.shape == (2, 5, D) and (empty == 0).all()


@pytest.mark.parametrize("name", ALL)
def test_batch_independence(name):
    m = _module(name).double()
    q, k, v = (
        torch.randn(3, 5, D).double(),
        torch.randn(3, 6, D).double(),
        torch.randn(3, 6, D).double(),
    )
    full = m(q, k, v)
    for b in range(3):
        assert torch.allclose(
            m(q[b : b + 1], k[b : b + 1], v[b : b + 1]), full[b : b + 1], atol=1e-12
        )
    k2 = k.clone()
    k2[1] += 1.0
    v2 = v.clone()
    v2[1] -= 2.0
    changed = m(q, k2, v2)
    assert torch.allclose(changed[[0, 2]], full[[0, 2]], atol=1e-12)


@pytest.mark.parametrize("name", ["RWKVAttention", "HyenaAttention"])
def test_causal_along_keys(name):
    m = _module(name).double()
    q, k, v = (
        torch.randn(1, 6, D).double(),
        torch.randn(1, 6, D).double(),
        torch.randn(1, 6, D).double(),
    )
    out = m(q, k, v)
    k2, v2 = k.clone(), v.clone()
    k2[:, 4:] += 3.0
    v2[:, 4:] -= 3.0
    out2 = m(q, k2, v2)
    assert torch.allclose(out[:, :4], out2[:, :4], atol=1e-12)
    assert not torch.allclose(out[:, 4:], out2[:, 4:])


def test_beta_attribute_on_softmax_types():
    for name in [
        "CrossAttention",
        "CosineAttention",
        "SparseAttention",
        "LocalAttention",
        "RandomFixedAttention",
        "GatedAttention",
    ]:
        m = _module(name)
        assert m.beta == 1.0
        q, k = torch.randn(1, 4, D), torch.randn(1, 5, D)
        a = m(q, k, k)
        m.beta = 4.0
        assert not torch.allclose(a, m(q, k, k))
        m.beta = None  # None means 1.0
        assert torch.allclose(a, m(q, k, k))
    for name in ["LinearAttention", "PoolingAttention", "CopyAttention", "RWKVAttention"]:
        assert _module(name).beta is None


@pytest.mark.parametrize("name", ALL)
def test_bad_config_and_inputs_raise_canvas_errors(name):
    cls = getattr(A, name)
    with pytest.raises(ShapeError, match="divisible"):
        cls(10, 3)
    with pytest.raises(CanvasTypeError):
        cls(8, 2, dropout=1.5)
    with pytest.raises(CanvasTypeError):
        cls(8.0, 2)
    m = cls(8, 2)
    with pytest.raises(ShapeError, match="queries"):
        m(torch.randn(2, 3, 7), torch.randn(2, 3, 8), torch.randn(2, 3, 8))
    with pytest.raises(ShapeError):
        m(torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 5, 8))
    with pytest.raises(ShapeError, match="key_mask"):
        m(
            torch.randn(2, 3, 8),
            torch.randn(2, 4, 8),
            torch.randn(2, 4, 8),
            key_mask=torch.ones(3, 5, dtype=torch.bool),
        )


def test_unknown_options_are_type_errors():
    with pytest.raises(TypeError):
        A.CrossAttention(8, 2, window=3)
    with pytest.raises(CanvasTypeError, match="top_k"):
        A.SparseAttention(8, 2, top_k=0)
    with pytest.raises(CanvasError, match="cuda_magic"):  # unknown kernel name: lists known ones
        A.RWKVAttention(8, 2, kernel="cuda_magic")
    with pytest.raises(CanvasTypeError, match="expert"):
        A.MixtureAttention(8, 2, experts=("nope",))


@pytest.mark.parametrize(
    "name",
    ["CrossAttention", "LinearAttention", "SparseAttention", "RWKVAttention", "HyenaAttention"],
)
def test_compile_fullgraph(name):
    m = _module(name)
    c = torch.compile(m, backend="eager", fullgraph=True)
    q, k = torch.randn(2, 4, D), torch.randn(2, 5, D)
    mask = torch.rand(4, 5) > 0.5
    assert torch.allclose(c(q, k, k, key_mask=mask), m(q, k, k, key_mask=mask), atol=1e-5)
    assert torch.allclose(c(q, k, k), m(q, k, k), atol=1e-5)


BUILTIN_NAMES = [
    "cross_attention",
    "linear_attention",
    "cosine_attention",
    "sigmoid_attention",
    "gated",
    "perceiver",
    "pooling",
    "copy",
    "sparse_attention",
    "local_attention",
    "none",
    "random_fixed",
    "mixture",
    "rwkv",
    "hyena",
]


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_conformance_suite_strict(name):
    testing = pytest.importorskip("canvas_core.testing")
    testing.check_attention_type(name, strict=True)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("masked", [False, True])
def test_no_queries(name, masked):
    # an empty query set (a region with no position at this step) gives an empty output, never an error
    m = _module(name)
    q, k = torch.randn(2, 0, D), torch.randn(2, 4, D)
    mask = torch.ones(0, 4, dtype=torch.bool) if masked else None
    out = m(q, k, k, key_mask=mask)
    assert out.shape == (2, 0, D)
