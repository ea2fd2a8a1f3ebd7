"""Adaptive exit and step arguments that are callables: a closure, a ``functools.partial`` or a
bound method holding a per-sample tensor is refused (naming the captured tensor), as an object
holding one is, instead of applying every sample's rows to the running rows only (torch's
broadcast error, or wrong rows); so is a model scope's ``reenter`` capturing one; a callable
capturing only shared tensors runs."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import canvas_core as cc
from canvas_core.errors import BackboneError

torch.set_num_threads(1)


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x, mod=None):
        y = x + torch.tanh(self.fc(x))
        return mod(y) if mod is not None else y


class Net(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.embed_dim = d
        self.blocks = nn.ModuleList([Block(d) for _ in range(2)])

    def forward(self, x, mod=None):
        for b in self.blocks:
            x = b(x, mod)
        return x


class Scaler:
    def __init__(self, t):
        self.t = t

    def apply(self, h):
        return h * self.t


def _closure(t):
    return lambda h: h * t


def _net(scope):
    torch.manual_seed(0)
    m = Net().eval()
    cc.graft_looped_blocks(m, max_loops=2, scope=scope, update="replace")
    cc.set_loops(m, 8, exit_tol=0.2)
    return m


def _x():
    x = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(1))
    x[1] *= 0.01
    return x


@pytest.mark.parametrize("scope", ["stack", "model"])
@pytest.mark.parametrize("make, place", [
    (_closure, r"mod\.<closure t>"),
    (lambda t: functools.partial(torch.mul, other=t), r"mod\.keywords\['other'\]"),
    (lambda t: Scaler(t).apply, r"mod\.__self__\.t"),
])
def test_callable_holding_a_per_sample_tensor_is_refused(scope, make, place):
    m = _net(scope)
    scale = torch.tensor([1.0, 0.5, 2.0]).view(3, 1, 1)
    with pytest.raises(BackboneError, match=place + r" \(shape \(3, 1, 1\)\).*batch size 3.*cannot be split"):
        with torch.no_grad():
            m(_x(), make(scale))


def test_callable_holding_shared_tensors_runs_as_each_sample_alone():
    m = _net("stack")
    shared = torch.full((1, 1, 1), 0.5)
    x = _x()
    with torch.no_grad():
        out = m(x, _closure(shared))
        counts = cc.loop_counts(m)
        alone = torch.cat([m(x[i:i + 1], _closure(shared)) for i in range(3)])
    assert len(set(counts.tolist())) > 1  # samples stopped at different iterations
    assert torch.allclose(out, alone, atol=1e-6)


def test_model_scope_reenter_holding_a_per_sample_tensor_is_refused():
    from tests.looping._scope_setup import make_net

    scale = torch.tensor([1.0, 0.5, 0.2]).view(3, 1, 1)
    for reenter, refused in ((_closure(scale), True), (_closure(torch.full((1, 1, 1), 0.5)), False)):
        m = make_net()
        cc.graft_looped_blocks(m, max_loops=2, scope="model", reenter=reenter,
                               update="replace")
        cc.set_loops(m, 8, exit_tol=0.3)
        x = torch.randn(3, 5, 3, generator=torch.Generator().manual_seed(0))
        if refused:
            with pytest.raises(BackboneError, match=r"reenter\.<closure t> \(shape \(3, 1, 1\)\).*exit_tol=0"):
                m(x)
            cc.set_loops(m, 8, exit_tol=0.0)  # fixed depth: every row at every iteration
        with torch.no_grad():
            assert m(x).shape == x.shape
