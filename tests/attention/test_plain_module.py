"""``plain_module`` / ``plain_linear`` (``canvas_core.extend``): the check that decides whether a
fused path may read a module's parameters instead of calling it.  A hook or a subclass could change
what the call computes, so either one makes the module not plain, and the types using the check
then take their eager path."""

from __future__ import annotations

import torch
from torch import nn

from canvas_core.attention.simple import LinearAttention
from canvas_core.attention.softmax import CrossAttention, PerceiverAttention
from canvas_core.extend import plain_linear, plain_module


class _MyLinear(nn.Linear):
    pass


def test_a_hook_a_pre_hook_or_a_subclass_is_not_plain():
    lin = nn.Linear(3, 3)
    assert plain_module(lin, nn.Linear) and plain_linear(lin, with_bias=True)
    assert not plain_linear(lin, with_bias=False) and not plain_linear(nn.Linear(3, 3, bias=False), True)
    assert not plain_module(lin, nn.Conv1d) and not plain_module(object(), nn.Linear)
    handle = lin.register_forward_hook(lambda mod, inp, out: out)
    assert not plain_module(lin, nn.Linear) and not plain_linear(lin, with_bias=True)
    handle.remove()
    assert plain_module(lin, nn.Linear)
    handle = lin.register_forward_pre_hook(lambda mod, inp: None)
    assert not plain_module(lin, nn.Linear) and not plain_linear(lin, with_bias=True)
    handle.remove()
    assert not plain_module(_MyLinear(3, 3), nn.Linear) and not plain_linear(_MyLinear(3, 3), True)


def test_perceiver_with_a_hooked_or_subclassed_part_is_not_plain():
    m = PerceiverAttention(8, 2, n_latents=2)
    assert m._plain_parts()
    handle = m.encode.register_forward_pre_hook(lambda mod, args: None)
    assert not m._plain_parts()
    handle.remove()
    m.decode = type("MyCross", (CrossAttention,), {})(8, 2)
    assert not m._plain_parts()


def test_linear_attention_with_a_hooked_projection_runs_it():
    """The key summary shortcut reads ``v_proj``'s weights: a hook on it must still see a call
    and change the output as it does when the projection is called."""
    torch.manual_seed(0)
    m = LinearAttention(8, 2).double()
    q, k = torch.randn(2, 4, 8, dtype=torch.float64), torch.randn(2, 5, 8, dtype=torch.float64)
    before = m(q, k, k)
    calls = []
    m.v_proj.register_forward_hook(lambda mod, inp, out: calls.append(1) or out * 2.0)
    after = m(q, k, k)
    assert calls and not torch.allclose(before, after)
