"""linear_attention's per-query path reads first which weighing holds and builds only that one:
keys far apart cost the per-query weighing alone (no discarded first weighing alive while it is
built), keys close the first weighing alone; two host reads per call in both cases."""

from __future__ import annotations

import weakref
from typing import Any, Dict, List

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from canvas_core.attention.simple import _weigh_per_query

torch.set_num_threads(1)

B, H, N, HD = 1, 4, 32, 16


class _Large(TorchDispatchMode):
    """The ops returning a ``(B, H, Nq, Nk)``-sized tensor, and the most storages of that size alive
    at once (a storage counts while a tensor made here holds it)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.ops, self.peak = numel, [], 0
        self.holders: Dict[int, int] = {}

    def _drop(self, ptr: int) -> None:
        self.holders[ptr] -= 1
        if not self.holders[ptr]:
            del self.holders[ptr]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.numel() == self.numel:
            self.ops.append(func.__name__.split(".")[0])
            ptr = out.untyped_storage().data_ptr()
            self.holders[ptr] = self.holders.get(ptr, 0) + 1
            weakref.finalize(out, self._drop, ptr)
            self.peak = max(self.peak, len(self.holders))
        return out


def _inputs(far: bool):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, N, H * HD, generator=g) for _ in range(3))
    if far:  # half the keys ~100 below the others in log space: beyond float32's half range
        k[:, ::2] -= 100.0
    return q, k, v, torch.rand(B, N, N, generator=g) > 0.5


@pytest.mark.parametrize("far", [False, True])
def test_only_the_weighing_that_holds_is_built(far):
    q, k, v, mask = _inputs(far)
    with torch.no_grad(), _Large(B * H * N * N) as mode:
        out = _weigh_per_query(q, k, v, mask, HD)
    assert torch.isfinite(out).all()
    first = ["bmm", "_unsafe_view", "mul"]  # (qh kh^T) * mask
    per_query = ["masked_fill", "sub_", "clamp_", "exp_", "masked_fill_", "bmm", "_unsafe_view", "mul"]
    assert mode.ops[:-2] == (per_query if far else first), mode.ops  # then a @ vh reads a
    # the product qh kh^T and the weights; keys far apart: the per-query scale too (weighing
    # first kept the discarded first weighing alive as well: 4)
    assert mode.peak == (3 if far else 2), mode.peak


class _Reads:
    def __init__(self, monkeypatch: Any) -> None:
        self.reads: List[str] = []
        for name in ("item", "__bool__", "tolist", "nonzero"):
            real = getattr(torch.Tensor, name)

            def counted(t: torch.Tensor, *a: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
                self.reads.append(_name)
                return _real(t, *a, **kw)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("far", [False, True])
def test_two_host_reads_per_call(monkeypatch, far):
    q, k, v, mask = _inputs(far)
    with torch.no_grad():
        want = _weigh_per_query(q.double(), k.double(), v.double(), mask, HD)
    reads = _Reads(monkeypatch)
    with torch.no_grad():
        out = _weigh_per_query(q, k, v, mask, HD)
    assert reads.reads == ["__bool__", "__bool__"]  # which weighing holds; whether a row is low
    torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-5)
