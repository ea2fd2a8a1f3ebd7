"""``wkv_read`` in float32 against the float64 step recurrence (``wkv_scan(chunk=1)``) when the
key mask leaves long masked gaps and some channels decay fast.

An empty stretch (a chunk, or every chunk so far, with no allowed key) has no largest exponent.
Taken as 0 instead of ``-inf``, it became the maximum the real keys were weighed against: their
exponents, far below it, were all clamped to the same floor weight, so two keys ``e^80`` apart
weighed the same (0.5 where 1.0 is right).  float64's floor is far lower, which hid it there.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_core.attention import RWKVAttention
from canvas_core.attention.rwkv import wkv_read, wkv_scan

torch.set_num_threads(1)
EPS = torch.finfo(torch.float32).eps
DECAYS = [0.01, 0.3, 2.0, 9.0, 20.0, 45.0]


def test_a_key_after_an_empty_chunk_outweighs_an_older_one():
    L = 13
    k, v = torch.zeros(1, L, 1), torch.zeros(1, L, 1)
    v[0, 5, 0] = 1.0
    ok = torch.zeros(1, L, dtype=torch.bool)
    ok[0, 1] = ok[0, 5] = True
    out = wkv_read(k, v, torch.tensor([20.0]), torch.tensor([0.0]), torch.tensor([12]), ok, chunk=4)
    assert out.item() == 1.0  # key 5 outweighs key 1 by e^80


def _gappy_mask(draw, rows: int, L: int) -> torch.Tensor:
    """``(rows, L)`` bool: a few allowed islands separated by long masked gaps, or a sparse or
    dense random mask."""
    kind = draw(st.sampled_from(["islands", "sparse", "dense"]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    if kind != "islands":
        return torch.rand(rows, L, generator=g) < (0.1 if kind == "sparse" else 0.8)
    ok = torch.zeros(rows, L, dtype=torch.bool)
    for r in range(rows):
        for _ in range(draw(st.integers(0, 3))):
            start = int(torch.randint(0, L, (1,), generator=g))
            ok[r, start : start + draw(st.integers(1, 3))] = True
    return ok


@st.composite
def _cases(draw):
    B = draw(st.integers(1, 3))
    ends = draw(st.booleans())
    if ends:  # every read ends its own chunk of T keys
        T, Q = draw(st.integers(1, 8)), draw(st.sampled_from([1, 2, 5, 8, 64, 70]))
        L, chunk, read = T * Q, T, torch.arange(1, Q + 1) * T - 1
    else:
        long = draw(st.integers(0, 4)) == 0  # 64+ chunks: the two-level chunk states
        L = draw(st.integers(64, 140) if long else st.integers(1, 48))
        chunk = draw(st.sampled_from([1, 2] if long else [None, 1, 2, 3, 4, 5, 7, 16]))
        if draw(st.booleans()):
            read = torch.arange(L)
        else:
            read = torch.tensor(draw(st.lists(st.integers(-1, L - 1), min_size=1, max_size=8)))
    shared = draw(st.booleans())
    ok = _gappy_mask(draw, 1 if shared else B, L)
    w = torch.tensor(draw(st.lists(st.sampled_from(DECAYS), min_size=4, max_size=4)))
    return B, L, chunk, read, ok, w, ends, draw(st.integers(0, 2**31 - 1))


def _close(got: torch.Tensor, want: torch.Tensor, ulps: float, what: str) -> None:
    """``got`` (float32) within ``ulps`` float32 roundings of the largest entry of ``want``."""
    tol = ulps * EPS * max(1.0, want.abs().max().item())
    err = (got.double() - want).abs().max().item() if want.numel() else 0.0
    assert err <= tol, f"{what}: error {err:.3g} > {tol:.3g}"


@settings(max_examples=60, deadline=None)
@given(case=_cases())
def test_float32_read_matches_float64_step_recurrence_with_masked_gaps(case):
    B, L, chunk, read, ok, w, ends, seed = case
    g = torch.Generator().manual_seed(seed)
    C = w.shape[0]
    k32 = (torch.randn(B, L, C, generator=g) * 2).requires_grad_()
    v32 = torch.randn(B, L, C, generator=g, requires_grad=True)
    w32 = w.float().requires_grad_()
    u32 = torch.randn(C, generator=g, requires_grad=True)
    ins64 = [t.detach().double().requires_grad_() for t in (k32, v32, w32, u32)]
    out = wkv_read(k32, v32, w32, u32, read, ok, chunk=chunk, ends_chunks=ends)
    k, v, w64, u = ins64
    full = wkv_scan(k, v, w64, u, ok, chunk=1)
    ref = full.index_select(1, read.clamp(min=0)) * (read >= 0).view(1, -1, 1).double()
    ulps = 32 * (1 + L * w.max().item()) ** 0.5  # exponents reach L w: their rounding grows with it
    _close(out, ref.detach(), ulps, "value")
    gy = torch.randn(B, read.shape[0], C, generator=g)
    got = torch.autograd.grad(out, (k32, v32, w32, u32), gy, allow_unused=True, materialize_grads=True)
    want = torch.autograd.grad(ref, ins64, gy.double(), allow_unused=True, materialize_grads=True)
    for name, a, b in zip("kvwu", got, want):  # each a sum over the reads: their roundings add up
        _close(a, b, ulps * (B * read.shape[0]) ** 0.5, f"d{name}")


@settings(max_examples=8, deadline=None)
@given(per_row=st.booleans(), fast=st.sampled_from([0.0, 3.0, 4.0]), seed=st.integers(0, 2**31 - 1))
def test_module_float32_matches_float64_with_a_key_mask(per_row, fast, seed):
    """``RWKVAttention(kernel="torch")`` with a shared or per-row key mask: float32 output and
    ``time_decay`` gradient equal float64's to float32 rounding."""
    torch.manual_seed(seed)
    a = RWKVAttention(7, 1, kernel="torch")
    with torch.no_grad():
        a.time_decay[-3:] = fast  # w = e^fast: up to 55 per key
    b = RWKVAttention(7, 1, kernel="torch").double()
    b.load_state_dict(a.state_dict())
    q, kv = torch.randn(3, 40, 7), torch.randn(3, 17, 7)
    mask = torch.rand(3 if per_row else 1, 17) > 0.6
    mask = mask.expand(3, 17)
    outs = []
    for m, dt in ((a, torch.float32), (b, torch.float64)):
        out = m(q.to(dt), kv.to(dt), kv.to(dt), mask)
        (out * torch.arange(out.numel(), dtype=dt).view(out.shape).remainder(3)).sum().backward()
        outs.append((out.double(), m.time_decay.grad.double()))
    lw = 17 * max(1.0, float(torch.tensor(fast).exp()))  # the longest lag times w
    _close(outs[0][0], outs[1][0], 16 * (1 + lw) ** 0.5, "output")
    # w = exp(time_decay) rounded in float32 moves the exponents by ~ eps L w: d/dw inherits it
    _close(outs[0][1], outs[1][1], 16 * (1 + lw), "time_decay gradient")
