"""``wrapper_class=`` wrappers: one that is the block, is shared by several positions or drops its
block is refused at graft time with the model unchanged; one that keeps its block under another
name is refused by ``ungraft_looped_blocks`` (which could not put the block back) instead of
leaving the wrappers in a model that no longer reads as grafted."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import canvas_core as cc
from canvas_core.errors import BackboneError
from canvas_core.looping import loop_parts_of

from tests.looping._scope_setup import make_net

torch.set_num_threads(1)


class Holds(nn.Module):
    def __init__(self, block, idx, max_loops, dim):
        super().__init__()
        self.block = block  # not `original`
        self.loop_emb = nn.Parameter(torch.zeros(max_loops, dim))

    def set_loops(self, n):
        pass

    def forward(self, x):
        return self.block(x + self.loop_emb[0])


def _state(m):
    return [type(b) for b in m.blocks], [id(b) for b in m.blocks], {
        n: (p.requires_grad, p.detach().clone()) for n, p in m.named_parameters()}


def _same(a, b):
    assert a[0] == b[0] and a[1] == b[1] and a[2].keys() == b[2].keys()
    assert all(a[2][k][0] == b[2][k][0] and torch.equal(a[2][k][1], b[2][k][1]) for k in a[2])


shared = {}


@pytest.mark.parametrize("factory, why", [
    (lambda b, i, n, d: b, "block 0, the block itself"),
    (lambda b, i, n, d: shared.setdefault("w", Holds(b, i, n, d)), "block 1, the wrapper it built for block 0"),
    (lambda b, i, n, d: Holds(nn.Linear(d, d), i, n, d), "block 0, a wrapper that does not hold the block"),
])
def test_bad_wrappers_are_refused_untouched(factory, why):
    shared.clear()
    m = make_net()
    before = _state(m)
    with pytest.raises(BackboneError, match=rf"wrapper_class=<lambda> returned, for {why}.*`original`"):
        cc.graft_looped_blocks(m, max_loops=2, wrapper_class=factory)
    _same(_state(m), before)
    assert not loop_parts_of(m)


def test_ungraft_refuses_a_wrapper_without_original():
    m = make_net()
    x = torch.randn(2, 5, 3)
    parts, _ = cc.graft_looped_blocks(m, max_loops=2, wrapper_class=Holds)
    with torch.no_grad():
        out = m(x)
    with pytest.raises(BackboneError, match=r"block 0 \(Holds\) does not say which backbone block"):
        cc.ungraft_looped_blocks(m)
    assert list(m.blocks) == parts and cc.looping.get_adapter(m) is not None  # unchanged
    with torch.no_grad():
        assert torch.equal(m(x), out)
