"""Regressions: default-dtype parameters (rwkv), additive masks with NaN / +inf refused, masks with
a last dimension of 1 broadcast along the keys, ``mixture``'s mask errors naming the mixture, and
the build-time probe explaining failures on mixed parameter dtypes."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch
from torch import nn

import canvas_core
from canvas_core.errors import AttentionContractError, CanvasError, ShapeError

D, H = 16, 2
B, NQ, NK = 2, 5, 7
#: the builtin types (plugin types are covered in their own packages)
BUILTINS = [n for n in canvas_core.list_attention_types()
            if type(canvas_core.create_attention(n, D, H)).__module__.startswith("canvas_core.")]


@pytest.fixture
def default_float64() -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _module(name: str) -> nn.Module:
    torch.manual_seed(0)
    m = canvas_core.create_attention(name, D, H).eval()
    with torch.no_grad():  # open zero gates (gated's alpha), so the keys matter
        for p in m.parameters():
            if p.numel() and not bool(p.any()):
                p.normal_(0, 0.5)
    return m


def _inputs(nq: int = NQ, nk: int = NK):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(B, nq, D, generator=g), torch.randn(B, nk, D, generator=g),
            torch.randn(B, nk, D, generator=g))


# ---------------------------------------------------------------- 1. parameters in the default dtype
def test_rwkv_parameters_follow_the_default_dtype(default_float64: None) -> None:
    m = canvas_core.create_attention("rwkv", D, H)
    assert {p.dtype for p in m.parameters()} == {torch.float64}
    x = torch.randn(2, 5, D)
    assert m(x, x, x).dtype == torch.float64


def test_rwkv_float32_init_unchanged() -> None:
    torch.manual_seed(0)
    m = canvas_core.create_attention("rwkv", D, H)
    ratio = torch.arange(D, dtype=torch.float32) / (D - 1)
    assert torch.equal(m.time_decay.detach(), -5.0 + 8.0 * ratio ** (0.7 + 1.3 * ratio))
    zigzag = ((torch.arange(D) + 1) % 3 - 1).float() * 0.5
    assert torch.equal(m.time_first.detach(), torch.full((D,), -1.2039728043259361) + zigzag)


def test_layer_with_rwkv_builds_under_float64_default(default_float64: None) -> None:
    from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection

    lay = CanvasLayout(T=1, H=1, W=4, d_model=D, regions={"a": (0, 1, 0, 1, 0, 2), "b": (0, 1, 0, 1, 2, 4)})
    layer = CanvasAttention(CanvasTopology(connections=[Connection("a", "b", fn="rwkv")]), lay, d_model=D, n_heads=H)
    assert layer(torch.randn(2, 4, D)).dtype == torch.float64


class _MixedDtypes(nn.Module):
    """A plugin-like type with one float32 parameter among float64 ones; ``fails``: it feeds its
    float64 input to the float32 weight (torch's bare dtype error), else it casts (and works)."""

    def __init__(self, d_model: int, fails: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model).double()
        self.scale = nn.Linear(d_model, d_model).float()
        self.fails = fails

    def forward(self, queries, keys, values, key_mask=None):
        pooled = values.mean(1, keepdim=True).expand_as(queries)
        if self.fails:  # float64 weights on the caller's float32 input: torch's bare dtype error
            return self.scale(self.proj(pooled))
        return self.scale(self.proj(pooled.to(self.proj.weight.dtype)).float()).to(queries.dtype)


@pytest.mark.parametrize("probe", ["probe_attention_module", "init_gradient_problem"])
def test_probe_explains_a_failure_on_mixed_parameter_dtypes(probe: str) -> None:
    from canvas_core.runtime import type_probe

    where = "connection #0 'a' -> 'b' (fn 'mixed_t')"
    fn = getattr(type_probe, probe)
    args = (_MixedDtypes(D, fails=True), "mixed_t", D) + ((where,) if probe == "probe_attention_module" else ())
    kw = {} if probe == "probe_attention_module" else {"where": where}
    with pytest.raises(AttentionContractError, match=r"attention type 'mixed_t' .*mixed dtypes") as ei:
        fn(*args, **kw)
    assert "'proj.weight' is torch.float64" in str(ei.value) and "'scale.weight' is torch.float32" in str(ei.value)
    assert str(ei.value).startswith(where)


@pytest.mark.parametrize("probe", ["probe_attention_module", "init_gradient_problem", "constant_branch"])
def test_probe_accepts_a_type_that_copes_with_mixed_dtypes(probe: str) -> None:
    from canvas_core.runtime import type_probe

    fn = getattr(type_probe, probe)
    args = (_MixedDtypes(D, fails=False), "mixed_t", D) + (("c",) if probe == "probe_attention_module" else ())
    fn(*args)  # no error: casting inside forward is the type's business


# ---------------------------------------------------------------- 2. NaN / +inf in an additive mask
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", BUILTINS)
def test_additive_mask_with_nan_or_posinf_is_refused(name: str, bad: float) -> None:
    q, k, v = _inputs()
    mask = torch.zeros(NQ, NK)
    mask[:, 3] = bad
    mask[0, 1] = float("-inf")
    named = "cross_attention" if name == "self_attention" else name  # the alias is the class itself
    with pytest.raises(ShapeError, match=rf"^{named}: the additive float key_mask of shape \(5, 7\) holds NaN or \+inf"):
        _module(name)(q, k, v, key_mask=mask)


@pytest.mark.parametrize("name", BUILTINS)
def test_additive_mask_with_finite_and_neg_inf_still_accepted(name: str) -> None:
    q, k, v = _inputs()
    mask = torch.zeros(NQ, NK)
    mask[:, 3] = float("-inf")
    allowed = mask != float("-inf")
    m = _module(name)
    torch.testing.assert_close(m(q, k, v, key_mask=mask), m(q, k, v, key_mask=allowed))


# ---------------------------------------------------------------- 3. a last dimension of 1 broadcasts
def _full() -> torch.Tensor:
    return torch.rand(B, NQ, 1, generator=torch.Generator().manual_seed(3)) > 0.4


SHAPES = {
    "(Nq, 1)": lambda f: f[0],
    "(B, Nq, 1)": lambda f: f,
    "(B, 1, 1)": lambda f: f[:, :1],
    "(1, 1)": lambda f: torch.zeros(1, 1, dtype=torch.bool),
    "0-d": lambda f: torch.tensor(True),
    "(B, 1) read as (B, Nk)": lambda f: f[:, 0],
    "float (Nq, 1)": lambda f: torch.zeros(NQ, 1).masked_fill(~f[0], float("-inf")),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", BUILTINS)
def test_last_dim_one_mask_equals_expanded_mask(name: str, shape: str) -> None:
    q, k, v = _inputs()
    mask = SHAPES[shape](_full())
    bool_mask = mask if mask.dtype == torch.bool else mask != float("-inf")
    if shape.startswith("(B, 1) read as"):
        expanded = bool_mask[:, None, :].expand(B, NQ, NK)
    else:
        expanded = bool_mask.expand(B, NQ, NK)
    m = _module(name)
    torch.testing.assert_close(m(q, k, v, key_mask=mask), m(q, k, v, key_mask=expanded.clone()))


def test_mask_that_does_not_broadcast_still_refused() -> None:
    q, k, v = _inputs()
    with pytest.raises(ShapeError, match=r"rwkv: key_mask of shape \(5, 2\) does not broadcast"):
        _module("rwkv")(q, k, v, key_mask=torch.ones(NQ, 2, dtype=torch.bool))


# ---------------------------------------------------------------- 4. messages name the registered type
def test_self_attention_is_canvas_engineerings_cross_attention() -> None:
    # canvas-engineering maps the alias to the class itself: exact-type checks keep working
    assert type(canvas_core.create_attention("self_attention", D, H)) is canvas_core.CrossAttention


def test_self_attention_same_output_as_cross_attention() -> None:
    q, k, v = _inputs()
    torch.manual_seed(0)
    a = canvas_core.create_attention("cross_attention", D, H).eval()
    s = canvas_core.create_attention("self_attention", D, H).eval()
    s.load_state_dict(a.state_dict())
    torch.testing.assert_close(s(q, k, v), a(q, k, v), rtol=0, atol=0)


@pytest.mark.parametrize("mask", [torch.ones(NQ, 2, dtype=torch.bool), torch.full((NQ, NK), float("nan"))])
def test_mixture_mask_errors_name_the_mixture(mask: torch.Tensor) -> None:
    q, k, v = _inputs()
    with pytest.raises(CanvasError, match=r"^mixture: .*key_mask of shape \(5, (2|7)\)"):
        _module("mixture")(q, k, v, key_mask=mask)


def test_float_mask_still_compiles_fullgraph() -> None:
    """The NaN / +inf refusal is an eager check: a traced call cannot branch on the mask's values."""
    torch._dynamo.reset()
    m = _module("cross_attention")
    q, k, v = _inputs()
    mask = torch.zeros(NQ, 1).masked_fill(~_full()[0], float("-inf"))
    c = torch.compile(m, backend="eager", fullgraph=True)
    torch.testing.assert_close(c(q, k, v, key_mask=mask), m(q, k, v, key_mask=mask))
