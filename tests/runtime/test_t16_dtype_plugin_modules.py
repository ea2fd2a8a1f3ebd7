"""A plugin type whose module is built in another dtype (or on another device) than the canvas
layer calling it passes the build (probed in its own dtype, skipped on meta) and is refused at the
first forward with a ShapeError naming the type, both dtypes and the fix, instead of torch's
"mat1 and mat2 must have the same dtype" or a silent computation in another precision.  Converting
the whole layer (``.double()``, ``.to(bfloat16)``) and autocast keep working."""

from __future__ import annotations

from typing import Any, Optional

import pytest
import torch
from torch import nn

from canvas_core import AttentionDispatcher, CanvasAttention, CanvasLayout, CanvasTopology, Connection
from canvas_core.errors import CanvasError, ShapeError
from canvas_core.plugins import register_attention, unregister_attention
from canvas_core.runtime.type_call import call_attention_type

LAYOUT = CanvasLayout(T=2, H=1, W=4, d_model=8, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 0, 1, 2, 4)})


class _Pooled(nn.Module):
    """Mean of the values through one linear map, in whatever dtype / device it was built."""

    def __init__(self, d_model: int, n_heads: int = 4, dropout: float = 0.0, dtype: Any = None,
                 device: Any = None, casts: bool = False) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model, dtype=dtype, device=device)
        self.casts = casts

    def forward(self, queries, keys, values):
        pooled = values.mean(1, keepdim=True).expand_as(queries).contiguous()
        if self.casts:  # computes in its own dtype and casts back: runs, in another precision
            return self.proj(pooled.to(self.proj.weight.dtype)).to(queries.dtype)
        return self.proj(pooled)


class _Float64Plugin(_Pooled):
    def __init__(self, d_model: int, n_heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__(d_model, n_heads, dropout)
        self.proj = nn.Linear(d_model, d_model).double()  # the factory converts its own module


def _topology(fn: str, softmax: bool = True) -> CanvasTopology:
    conns = [Connection("a", "b", t_src=0, t_dst=0, fn=fn)]
    return CanvasTopology(connections=([Connection("b", "b")] if softmax else []) + conns)


def _layer(cls: Any = CanvasAttention, fn: str = "t16_plug", softmax: bool = True, **kw: Any) -> CanvasAttention:
    return cls(_topology(fn, softmax), LAYOUT, d_model=8, n_heads=2,
               attention_factory=lambda f, *a, **k: _Pooled(*a, **kw, **k))


def _refused(layer: nn.Module, x: torch.Tensor, *words: str) -> ShapeError:
    with pytest.raises(ShapeError) as info:
        layer(x)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    return info.value


def test_a_registered_float64_plugin_in_a_float32_dispatcher_is_refused_at_the_first_forward():
    register_attention("t16_dtype_f64", _Float64Plugin)
    try:
        layer = AttentionDispatcher(_topology("t16_dtype_f64"), LAYOUT, d_model=8, n_heads=2)  # the build passes
        err = _refused(layer, torch.randn(2, 8, 8), "'t16_dtype_f64'", "_Float64Plugin", "torch.float64",
                       "torch.float32", "layer.to(torch.float32)", "autocast")
        assert isinstance(err, CanvasError) and isinstance(err, ValueError)
        assert "mat1 and mat2" not in str(err)
    finally:
        unregister_attention("t16_dtype_f64")


@pytest.mark.parametrize("cls", [CanvasAttention, AttentionDispatcher])
def test_a_float64_module_in_a_float32_layer_names_both_dtypes_and_the_fix(cls):
    _refused(_layer(cls, dtype=torch.float64), torch.randn(2, 8, 8), "'t16_plug'", "torch.float64",
             "computes in torch.float32", "Build the module in the layer's dtype", "layer.to(torch.float32)")


def test_converting_the_whole_layer_after_the_build_is_the_fix():
    layer = _layer(dtype=torch.float64)
    assert layer.float()(torch.randn(2, 8, 8)).dtype == torch.float32  # the module converted with it
    layer = _layer(dtype=torch.float64).double()
    assert layer(torch.randn(2, 8, 8, dtype=torch.float64)).dtype == torch.float64


def test_a_float32_module_in_a_float64_layer_is_refused():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the layer's own weights are float64
    try:
        layer = _layer(dtype=torch.float32)
    finally:
        torch.set_default_dtype(old)
    _refused(layer, torch.randn(2, 8, 8, dtype=torch.float64), "its floating parameters are torch.float32",
             "computes in torch.float64")


@pytest.mark.parametrize("to", [torch.float64, torch.bfloat16])
def test_a_whole_layer_converted_with_its_modules_keeps_working(to):
    layer = _layer().to(to)
    out = layer(torch.randn(2, 8, 8).to(to))
    assert out.dtype == to and bool(torch.isfinite(out).all())


def test_a_bfloat16_module_in_a_float32_layer_is_refused_but_runs_under_autocast():
    layer = _layer(dtype=torch.bfloat16)
    x = torch.randn(2, 8, 8)
    _refused(layer, x, "torch.bfloat16", "computes in torch.float32")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_module_casting_to_its_own_dtype_is_refused_not_run_in_another_precision(dtype):
    layer = _layer(dtype=dtype, casts=True)  # it used to run, silently computing in `dtype`
    _refused(layer, torch.randn(2, 8, 8), str(dtype), "another precision")


def test_a_module_on_the_meta_device_is_refused_naming_meta_and_the_fix():
    layer = _layer(device="meta")  # nothing to probe on meta: the build passes
    err = _refused(layer, torch.randn(2, 8, 8), "'t16_plug'", "meta device", "on cpu",
                   "module.to_empty(device='cpu')", "discard the layer's own weights")
    assert isinstance(err.__cause__, RuntimeError)  # torch's own error kept as the cause


def test_a_module_converted_alone_after_a_forward_is_refused_at_the_next():
    layer = _layer()
    x = torch.randn(2, 8, 8)
    layer(x)
    layer(x)  # the check is cached for this module and dtype
    layer.fn_modules[next(iter(layer.fn_modules))].double()
    _refused(layer, x, "torch.float64", "computes in torch.float32")


def test_the_runtime_call_refuses_a_plugin_module_of_another_dtype():
    """What backbones and rollouts call (runtime/type_call.py), without a layer around it."""
    module = _Pooled(8, dtype=torch.float64)
    q, kv = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    with pytest.raises(ShapeError, match=r"'t16_direct'.*torch\.float64.*torch\.float32"):
        call_attention_type(module, q, kv, kv, name="t16_direct")
    assert call_attention_type(module, q.double(), kv.double(), kv.double(), name="t16_direct").dtype == torch.float64


def test_a_module_mixing_the_layer_dtype_with_another_still_runs():
    class _Mixed(nn.Module):
        def __init__(self, d_model: int, n_heads: int = 4, dropout: float = 0.0) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(d_model, dtype=torch.float64))  # casts it itself
            self.proj = nn.Linear(d_model, d_model)

        def forward(self, queries, keys, values, key_mask: Optional[torch.Tensor] = None):
            return self.proj(values.mean(1, keepdim=True).expand_as(queries) * self.scale.to(queries.dtype))

    layer = CanvasAttention(_topology("t16_mixed"), LAYOUT, d_model=8, n_heads=2,
                            attention_factory=lambda f, *a, **k: _Mixed(*a, **k))
    assert layer(torch.randn(2, 8, 8)).dtype == torch.float32


class _CastsItself(nn.Module):
    """Casts its inputs to its own parameters' dtype and back: runs in any dtype without an error."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, q, k, v, key_mask=None):
        return self.proj(q.to(self.proj.weight.dtype)).to(q.dtype)


def test_a_parameter_replaced_after_a_call_is_seen() -> None:
    m = _CastsItself()
    q = torch.randn(1, 3, 8)
    call_attention_type(m, q, q, q, name="casts")
    m.proj = nn.Linear(8, 8).double()  # a new parameter object, not a conversion in place
    with pytest.raises(ShapeError, match="float64"):
        call_attention_type(m, q, q, q, name="casts")


class _EqualsEverything(_CastsItself):
    def __eq__(self, other):  # defines __eq__ without __hash__: instances are unhashable
        return True


def test_unhashable_modules_still_run() -> None:
    """torch itself cannot walk an unhashable module's parameters: the check steps aside instead
    of failing the call with a TypeError."""
    q = torch.randn(1, 3, 8)
    for m in (_EqualsEverything(), _EqualsEverything().double()):
        assert call_attention_type(m, q, q, q, name="eq").shape == q.shape
