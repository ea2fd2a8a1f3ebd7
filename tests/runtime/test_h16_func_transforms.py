"""Forward-mode AD through a type built on a ``torch.library`` custom operator (mamba's scan).

torch gives custom operators no forward-mode derivative and drops their outputs' tangents without
a word, so ``jvp`` through a mamba layer returned a wrong tangent (off by 5e-2 from the Jacobian).
It is refused now, as for the types with a hand-written backward.
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
