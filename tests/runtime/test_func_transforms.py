"""Canvas layers under ``torch.func`` transforms (docs/limits.md, "torch.func transforms").

The softmax-family and module types run under ``vmap``, ``jacrev``, ``jvp`` and forward-mode AD
and agree with the plain batch and with ``torch.autograd.functional.jacobian``; the types with a hand-written backward
are refused with an ``UnavailableError`` naming the type (before: torch's bare RuntimeError, and
``vmap`` failed for every type on the non-finite-key check's data-dependent shortcut). So is
forward-mode AD through a type built on a ``torch.library`` custom operator (mamba's scan): torch
gives such operators no forward derivative and dropped their tangents without a word (a ``jvp``
through a mamba layer was 5e-2 off the Jacobian).
"""

from __future__ import annotations

import pytest
import torch

import canvas_core as cc
from canvas_core.errors import CanvasError, UnavailableError


def _layer(fn: str) -> cc.CanvasAttention:
    layout = cc.CanvasLayout(T=2, H=2, W=4, d_model=16,
                             regions={"a": (0, 2, 0, 1, 0, 4), "b": (0, 2, 1, 2, 0, 4)})
    topology = cc.CanvasTopology(connections=[cc.Connection("a", "b", fn=fn, t_src=0, t_dst=0),
                                              cc.Connection("b", "b")])
    torch.manual_seed(0)
    return cc.CanvasAttention(topology, layout, 16, 2).double()


@pytest.mark.parametrize("fn", ["cross_attention", "gated", "pooling", "cosine_attention"])
def test_vmap_and_jacrev_equal_the_batch_and_the_autograd_jacobian(fn):
    torch.set_num_threads(1)
    layer = _layer(fn)
    x = torch.randn(3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    one = lambda xi: layer(xi[None])[0]  # noqa: E731
    torch.testing.assert_close(torch.func.vmap(one)(x), layer(x), rtol=1e-12, atol=1e-12)
    jac = torch.func.jacrev(one)(x[0])
    torch.testing.assert_close(jac, torch.autograd.functional.jacobian(one, x[0]), rtol=1e-12, atol=1e-12)
    assert jac.abs().sum() > 0


@pytest.mark.parametrize("fn", ["cross_attention", "gated", "perceiver", "pooling", "cosine_attention"])
def test_forward_mode_ad_equals_the_jacobian_times_the_tangent(fn):
    # torch's fused CPU attention kernel has no forward derivative: the layer runs the math one then
    import torch.autograd.forward_ad as fwAD

    torch.set_num_threads(1)
    layer = _layer(fn)
    g = torch.Generator().manual_seed(2)
    x, t = (torch.randn(1, 16, 16, dtype=torch.float64, generator=g) for _ in range(2))
    expected = torch.einsum("bnd...,...->bnd", torch.autograd.functional.jacobian(layer, x), t)
    out, tangent = torch.func.jvp(layer, (x,), (t,))
    torch.testing.assert_close(out, layer(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tangent, expected, rtol=1e-10, atol=1e-12)
    with fwAD.dual_level():
        dual = fwAD.unpack_dual(layer(fwAD.make_dual(x, t))).tangent
    torch.testing.assert_close(dual, expected, rtol=1e-10, atol=1e-12)
    assert expected.abs().sum() > 0


@pytest.mark.parametrize("fn", ["hyena", "rwkv", "linear_attention"])
@pytest.mark.parametrize("transform", ["vmap", "jacrev", "jvp", "dual"])
def test_hand_written_backwards_are_refused_under_a_transform_naming_the_type(fn, transform):
    torch.set_num_threads(1)
    layer = _layer(fn)
    x = torch.randn(3, 16, 16, dtype=torch.float64)
    one = lambda xi: layer(xi[None])[0]  # noqa: E731
    with pytest.raises(UnavailableError) as info:
        if transform == "jvp":
            torch.func.jvp(one, (x[0],), (torch.ones_like(x[0]),))
        elif transform == "dual":
            import torch.autograd.forward_ad as fwAD

            with fwAD.dual_level():
                one(fwAD.make_dual(x[0], torch.ones_like(x[0])))
        else:
            getattr(torch.func, transform)(one)(x if transform == "vmap" else x[0])
    msg = str(info.value)
    assert f"attention type {fn!r}" in msg and "forward-mode AD" in msg and "jacobian" in msg, msg
    assert isinstance(info.value, CanvasError) and isinstance(info.value.__cause__, RuntimeError)
    # the plain autograd path works for the same layer
    jac = torch.autograd.functional.jacobian(one, x[0])
    assert jac.shape == (16, 16, 16, 16) and jac.abs().sum() > 0


@pytest.mark.parametrize("how", ["jvp", "dual"])
def test_jvp_through_a_custom_operator_is_refused_not_wrong(how):
    import torch.autograd.forward_ad as fwAD

    torch.set_num_threads(1)
    layer = _layer("mamba")
    g = torch.Generator().manual_seed(3)
    x, t = (torch.randn(1, 16, 16, dtype=torch.float64, generator=g) for _ in range(2))
    with pytest.raises(UnavailableError) as info:
        if how == "jvp":
            torch.func.jvp(layer.delta, (x,), (t,))
        else:
            with fwAD.dual_level():
                layer.delta(fwAD.make_dual(x, t))
    msg = str(info.value)
    assert "attention type 'mamba'" in msg and "forward-mode" in msg, msg
    if how == "jvp":  # refused by the core's guard (the dual-level path was refused already)
        assert "custom operator canvas_mamba." in msg, msg
    assert isinstance(info.value, CanvasError)
    # reverse mode is unaffected: the layer reads its linked inputs
    jac = torch.autograd.functional.jacobian(layer.delta, x)
    assert jac.abs().sum() > 0


@pytest.mark.parametrize("fn", ["gated", "pooling", "copy"])
def test_jvp_of_types_without_custom_operators_still_equals_the_jacobian(fn):
    torch.set_num_threads(1)
    layer = _layer(fn)
    g = torch.Generator().manual_seed(4)
    x, t = (torch.randn(1, 16, 16, dtype=torch.float64, generator=g) for _ in range(2))
    expected = torch.einsum("bnd...,...->bnd", torch.autograd.functional.jacobian(layer.delta, x), t)
    _, tangent = torch.func.jvp(layer.delta, (x,), (t,))
    torch.testing.assert_close(tangent, expected, rtol=1e-10, atol=1e-12)
