"""compile_blocks with options torch.compile refuses, or a block_attr that is not a block list
(found in the audit): a CanvasError naming the options or the attribute, no block compiled."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from canvas_core.errors import CanvasError
from canvas_core.runtime.regional_compile import compile_blocks


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(3, 8)
        self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])
        self.empty = nn.ModuleList()

    def forward(self, x):
        x = self.embed(x)
        for b in self.blocks:
            x = b(x)
        return x


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="bogus"), "Unrecognized mode=bogus"),
    (dict(bogus=1), "unexpected keyword argument 'bogus'"),
    (dict(backend="no_such_backend"), "no_such_backend"),
])
def test_refused_options_name_them_and_compile_nothing(kwargs, match):
    m = Net()
    with pytest.raises(CanvasError, match=r"torch.compile refused the options .*" + match):
        compile_blocks(m, **kwargs)
    assert all(b._compiled_call_impl is None for b in m.blocks)


def test_a_failure_on_a_later_block_undoes_the_earlier_ones(monkeypatch):
    m = Net()
    real = nn.Module.compile

    def flaky(self, *a, **k):
        if self is m.blocks[2]:
            raise RuntimeError("boom")
        return real(self, *a, **k)

    monkeypatch.setattr(nn.Module, "compile", flaky)
    with pytest.raises(CanvasError, match="RuntimeError: boom"):
        compile_blocks(m, backend="eager")
    assert all(b._compiled_call_impl is None for b in m.blocks)


@pytest.mark.parametrize("attr, match", [
    ("embed", r"Net.embed is a Linear, not a list of blocks"),
    ("empty", r"Net.empty is an empty ModuleList"),
    ("nothing", r"Net.nothing is missing"),
])
def test_block_attr_that_is_not_a_block_list(attr, match):
    with pytest.raises(CanvasError, match=match):
        compile_blocks(Net(), attr)
