"""Hostile-sweep regressions for the builtin types' arguments and number formats: float16
autocast sums, float64 routing, refused sizes, non-finite hyperparameters, ``dropout=1.0``."""

from __future__ import annotations

import math

import pytest
import torch

from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection
from canvas_core.attention.linear_sums import key_summary
from canvas_core.errors import CanvasError, CanvasTypeError, SizeLimitError
from canvas_core.plugins import create_attention, list_attention_types

D = 16


def _keys(n, scale, seed=1):
    return scale * torch.randn(1, n, D, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- float16 autocast
@pytest.mark.parametrize("mask", [None, "keys", "per_query"])
@pytest.mark.parametrize("fn", ["linear_attention", "mixture"])
def test_linear_sums_stay_finite_under_float16_autocast(fn, mask):
    """Large keys summed over thousands of positions overflow float16; the sums run in float32
    under float16 autocast as they do for plain float16 input (the projections follow autocast)."""
    torch.manual_seed(0)
    m = create_attention(fn, d_model=D, n_heads=2)
    x = _keys(4096, 20.0)
    q = x[:, :8]
    km = {None: None, "keys": torch.arange(4096) % 3 > 0,
          "per_query": torch.rand(8, 4096, generator=torch.Generator().manual_seed(2)) > 0.3}[mask]
    ref = m(q, x, x, key_mask=km)
    with torch.autocast("cpu", dtype=torch.float16):
        out = m(q, x, x, key_mask=km)
    assert out.isfinite().all()
    torch.testing.assert_close(out.float(), ref, atol=0.05 * ref.abs().max().item(), rtol=0.05)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_linear_attention_compiles_fullgraph_under_autocast(dtype):
    torch.manual_seed(0)
    m = create_attention("linear_attention", d_model=D, n_heads=2)
    x = _keys(512, 20.0)
    c = torch.compile(m, backend="eager", fullgraph=True)
    with torch.autocast("cpu", dtype=dtype):
        eager, compiled = m(x[:, :4], x, x), c(x[:, :4], x, x)
    assert compiled.isfinite().all()
    torch.testing.assert_close(compiled, eager)


@pytest.mark.parametrize("same", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_key_summary_computes_in_its_inputs_dtype_under_autocast(dtype, same):
    """The fused key summary called under autocast gives what it gives outside it (float32
    results and gradients), not an overflowing float16 product or a dtype clash in its backward."""
    g = torch.Generator().manual_seed(4)
    leaves = [20 * torch.randn(2, 2048, D, generator=g), torch.randn(2, 2048, D, generator=g),
              0.3 * torch.randn(D, D, generator=g), torch.randn(D, generator=g)]
    results = []
    for amp in (False, True):
        k, v, w, b = [t.clone().requires_grad_() for t in leaves]
        with torch.autocast("cpu", dtype=dtype, enabled=amp):
            P, s = key_summary(k, None if same else v, w, b)
            (P.sum() + s.sum()).backward()
        assert P.dtype == s.dtype == torch.float32
        results.append([P.detach(), s.detach(), k.grad, w.grad, b.grad] + ([] if same else [v.grad]))
    for plain, amp in zip(*results):
        torch.testing.assert_close(amp, plain)


# ---------------------------------------------------------------- float64 routing
def test_mixture_float64_passes_gradcheck():
    torch.manual_seed(0)
    m = create_attention("mixture", d_model=8, n_heads=2).double()
    q = torch.randn(1, 3, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 6, 8, dtype=torch.float64, requires_grad=True)
    assert m.gates(q).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda q, k: m(q, k, k), (q, k))


def test_mixture_gates_are_float32_softmax_under_bfloat16_autocast():
    torch.manual_seed(0)
    m = create_attention("mixture", d_model=8, n_heads=2, top_k_experts=2)
    q = torch.randn(2, 5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = m.gates(q)
    assert g.dtype == torch.float32
    torch.testing.assert_close(g.sum(-1), torch.ones(2, 5))


# ---------------------------------------------------------------- sizes
@pytest.mark.parametrize("fn, kwargs, variable", [
    ("perceiver", {"n_latents": 10**10}, "CANVAS_MAX_POSITIONS"),
    ("perceiver", {"n_latents": 10**9}, "CANVAS_MAX_POSITIONS"),
    ("hyena", {"order": 10**7}, "CANVAS_MAX_WIDTH"),
    ("hyena", {"filter_dim": 10**9}, "CANVAS_MAX_WIDTH"),
    ("hyena", {"n_bands": 10**9}, "CANVAS_MAX_WIDTH"),
    ("mixture", {"n_experts": 10**7}, "CANVAS_MAX_WIDTH"),
])
def test_runaway_type_sizes_are_refused_before_allocating(fn, kwargs, variable):
    name, value = next(iter(kwargs.items()))
    with pytest.raises(SizeLimitError, match=f"{fn}.*{variable}") as info:
        create_attention(fn, d_model=8, n_heads=2, **kwargs)
    assert f"{value:,}" in str(info.value) or name in str(info.value)


def test_type_sizes_follow_the_limit_variables(monkeypatch):
    """The limits are read at construction: lowering one refuses what the default allows, and
    the element limit bounds the weights a type would allocate."""
    create_attention("hyena", d_model=8, n_heads=2, order=4)
    monkeypatch.setenv("CANVAS_MAX_WIDTH", "24")
    with pytest.raises(SizeLimitError, match=r"order \* d_model \(order=4, d_model=8\) = 32"):
        create_attention("hyena", d_model=8, n_heads=2, order=4, filter_dim=16)
    with pytest.raises(SizeLimitError, match="number of experts"):
        create_attention("mixture", d_model=8, n_heads=2, experts=["pooling"] * 25)
    monkeypatch.delenv("CANVAS_MAX_WIDTH")
    monkeypatch.setenv("CANVAS_MAX_ELEMENTS", "1000")
    with pytest.raises(SizeLimitError, match="latents"):
        create_attention("perceiver", d_model=8, n_heads=2, n_latents=200)
    with pytest.raises(SizeLimitError, match="expert projection weights"):
        create_attention("mixture", d_model=8, n_heads=2, n_experts=8)  # 26 (8, 8) matrices


# ---------------------------------------------------------------- small arguments
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 0, -1.0, 10**400, True, "10"])
def test_cosine_init_scale_must_be_finite_and_positive(bad):
    with pytest.raises(CanvasTypeError, match="init_scale must be a finite number > 0"):
        create_attention("cosine_attention", d_model=8, n_heads=2, init_scale=bad)


def test_cosine_init_scale_sets_the_scale():
    m = create_attention("cosine_attention", d_model=8, n_heads=2, init_scale=3)
    torch.testing.assert_close(m.scale(), torch.full((2,), 3.0))


@pytest.mark.parametrize("bad", ["pooling", b"pooling", 3, {"pooling"}])
def test_mixture_experts_must_be_a_list_of_names(bad):
    with pytest.raises(CanvasTypeError, match="experts must be a list or tuple of expert type names") as info:
        create_attention("mixture", d_model=8, n_heads=2, experts=bad)
    if bad == "pooling":
        assert "experts=['pooling']" in str(info.value)


# ---------------------------------------------------------------- dropout 1.0
def _types():
    out = []
    for name in list_attention_types():
        try:
            create_attention(name, d_model=8, n_heads=2)
        except CanvasError:  # unavailable here
            continue
        out.append(name)
    return out


@pytest.mark.parametrize("fn", _types())
def test_every_type_takes_dropout_one_as_the_layer_does(fn):
    """``dropout=1.0`` (everything dropped in training) is accepted by every type, as by
    ``CanvasAttention`` and ``nn.Dropout``, and stays finite; outside [0, 1] is refused."""
    torch.manual_seed(0)
    m = create_attention(fn, d_model=8, n_heads=2, dropout=1.0).train()
    q = torch.randn(2, 3, 8, requires_grad=True)
    out = m(q, q, q)
    assert out.isfinite().all()
    if out.requires_grad:
        out.sum().backward()
        assert q.grad.isfinite().all()
    for bad in (1.0 + 1e-9, -0.1, math.nan):
        with pytest.raises(CanvasTypeError, match=r"dropout must be a float in \[0, 1\]"):
            create_attention(fn, d_model=8, n_heads=2, dropout=bad)


def test_a_layer_with_dropout_one_builds_its_non_softmax_types():
    lay = CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})
    topo = CanvasTopology(connections=[Connection("b", "a", fn="linear_attention"),
                                       Connection("a", "b", fn="cross_attention")])
    layer = CanvasAttention(topo, lay, n_heads=2, dropout=1.0).train()
    assert layer(torch.randn(1, lay.num_positions, 8)).isfinite().all()
