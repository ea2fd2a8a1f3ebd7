"""``causal_read``'s ``has`` (which queries read an allowed key at or before their read position)
against the plain definition, on random masks with broadcast dimensions and empty rows; it is
computed without an ``(Nq, Nk)`` temporary."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from canvas_core.attention.causal_read import causal_read  # noqa: E402


def _plain(Nq, Nk, allowed):
    read = [-(-(i + 1) * Nk // Nq) - 1 for i in range(Nq)]  # ceil((i + 1) Nk / Nq) - 1
    if allowed is None:
        return torch.tensor([[r >= 0 for r in read]]).unsqueeze(-1)
    B, rows, _ = allowed.shape
    return torch.tensor([[bool(allowed[b, i if rows > 1 else 0, : read[i] + 1].any()) if read[i] >= 0 else False
                          for i in range(Nq)] for b in range(B)]).unsqueeze(-1)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.integers(0, 9), st.sampled_from(["none", "shared", "per_query"]),
       st.integers(1, 3), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_has_matches_its_definition(Nq, Nk, kind, B, p, seed):
    g = torch.Generator().manual_seed(seed)
    allowed = None
    if kind != "none":
        rows = Nq if kind == "per_query" else 1
        allowed = torch.rand(B, rows, Nk, generator=g) < p
    read, has = causal_read(Nq, Nk, allowed, "cpu")
    want = _plain(Nq, Nk, allowed)
    assert has.dtype == torch.bool and torch.equal(has.expand_as(want), want)
    assert read.tolist() == [-(-(i + 1) * Nk // Nq) - 1 for i in range(Nq)]


def test_no_query_by_key_temporary_without_a_mask():
    # 20,000 x 20,000 queries and keys: the old (Nq, Nk) comparison took 400 MB; now O(Nq)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        read, has = causal_read(20_000, 20_000, None, "cpu")
    assert bool(has.all()) and read[-1].item() == 19_999
    biggest = max((e.cpu_memory_usage for e in prof.key_averages()), default=0)
    assert biggest < 10_000_000


def test_a_mask_is_read_in_place_not_copied():
    # a per-query mask of a 16k self link is 268 MB: reading its first allowed keys must not copy it
    from torch.utils._python_dispatch import TorchDispatchMode

    class Copies(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.big = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if "copy" in str(func) and isinstance(out, torch.Tensor) and out.numel() >= 64 * 64:
                self.big.append(str(func))
            return out

    allowed = torch.rand(1, 64, 64) < 0.5
    with Copies() as seen:
        causal_read(64, 64, allowed, "cpu")
    assert seen.big == []
