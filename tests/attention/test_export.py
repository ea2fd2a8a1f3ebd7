"""``torch.export`` of every registered attention type: the exported program runs with the
module's parameters requiring grad (what ``ep.module()`` gives) and computes what eager does.

An operation given ``out=`` inside an autograd function's forward is recorded as such when
``torch.export`` (non-strict, its default) traces through the function, and such an operation
refuses to run once an input requires grad: those buffers come from ``scratch_out``, which gives
none while tracing."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from canvas_core import create_attention, list_attention_types


class _Wrap(nn.Module):
    """Keys are the values, as the runtime calls a type on its key sets."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return self.inner(q, kv, kv)


def _exported_matches(type_name: str, nq: int, nk: int) -> None:
    torch.manual_seed(0)
    module = create_attention(type_name, 32, 4)
    q, kv = torch.randn(2, nq, 32), torch.randn(2, nk, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(_Wrap(module), (q, kv))
    exported = program.module()
    assert all(p.requires_grad for p in exported.parameters())  # as ep.module() hands them out
    torch.testing.assert_close(exported(q, kv), module(q, kv, kv), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("type_name", list_attention_types())
def test_every_type_exports_and_runs_with_grad_on(type_name):
    _exported_matches(type_name, 8, 24)


@pytest.mark.parametrize("type_name", ["rwkv", "linear_attention", "hyena", "mamba"])
@pytest.mark.parametrize("nq, nk", [(7, 24), (64, 960)])  # reads off the stride; rwkv's two-level states
def test_linear_time_types_export_on_their_other_paths(type_name, nq, nk):
    _exported_matches(type_name, nq, nk)


def test_scratch_out_gives_no_buffer_while_autograd_records():
    from canvas_core.attention.causal_read import scratch_out

    like = torch.zeros(3)
    with torch.no_grad():
        buf = scratch_out("test_export_slot", (2, 3), like)
        assert buf is not None and buf.shape == (2, 3)
    with torch.enable_grad():
        assert scratch_out("test_export_slot", (2, 3), like) is None
