"""The chunked selective scan (``canvas_plugin_mamba.chunked``) against the step-by-step
recurrence, forward and gradients, float64 (to rounding) and float32 (stable for large steps).

Hypothesis draws the lengths (1, not a multiple of the chunk, a single chunk, many chunks, no
keys, no queries), the chunk and work-block sizes (so blocks split rows and chunks), and which
positions the queries read (``-1``: nothing, repeated positions, out of order).
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from canvas_plugin_mamba.chunked import all_states, chunk_size, selective_scan_read
from hypothesis import assume, given, settings
from hypothesis import strategies as st

DT = torch.float64


def _reference(u, delta, A, B, C, read):
    """``y_q = C_q . h_{read_q}`` with ``h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t``, one
    step at a time (plain autograd)."""
    Bt, L, E = u.shape
    h = u.new_zeros(Bt, E, A.shape[1])
    states = []
    for t in range(L):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
        states.append(h)
    out = [
        (states[r] @ C[:, q, :, None]).squeeze(-1) if r >= 0 else u.new_zeros(Bt, E)
        for q, r in enumerate(read.tolist())
    ]
    return torch.stack(out, 1) if out else u.new_zeros(Bt, 0, E), states


def _draw(Bt, L, E, N, Q, seed, dtype, big=False):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(Bt, L, E, generator=g, dtype=DT)
    delta = F.softplus(torch.randn(Bt, L, E, generator=g, dtype=DT) + (3.0 if big else 0.0))
    A = -torch.rand(E, N, generator=g, dtype=DT) * (8.0 if big else 3.0)
    B = torch.randn(Bt, L, N, generator=g, dtype=DT)
    C = torch.randn(Bt, Q, N, generator=g, dtype=DT)
    read = torch.randint(-1, max(L, 1), (Q,), generator=g) if L else torch.full((Q,), -1)
    return [x.to(dtype).requires_grad_() for x in (u, delta, A, B, C)], read


@settings(max_examples=40, deadline=None)
@given(
    Bt=st.integers(1, 3),
    L=st.integers(0, 23),
    E=st.integers(1, 4),
    N=st.integers(1, 3),
    Q=st.integers(0, 9),
    chunk=st.sampled_from([None, 1, 2, 3, 5, 8, 64]),
    block=st.sampled_from([None, 1, 40, 200]),
    seed=st.integers(0, 2**31 - 1),
)
def test_chunked_scan_equals_step_recurrence_float64(Bt, L, E, N, Q, chunk, block, seed):
    inputs, read = _draw(Bt, L, E, N, Q, seed, DT)
    y = selective_scan_read(*inputs, read, chunk=chunk, block=block)
    ref, states = _reference(*inputs, read)
    assert y.shape == (Bt, Q, E)
    torch.testing.assert_close(y, ref, atol=1e-11, rtol=1e-9)
    gy = torch.randn(Bt, Q, E, dtype=DT, generator=torch.Generator().manual_seed(seed + 1))
    got = torch.autograd.grad(y, inputs, gy, allow_unused=True)
    want = torch.autograd.grad(ref, inputs, gy, allow_unused=True) if ref.requires_grad else [None] * 5
    for name, a, b in zip("u delta A B C".split(), got, want):
        a = torch.zeros_like(inputs[0]) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8, msg=name)
    if L:
        with torch.no_grad():
            every = all_states(*[x.detach() for x in inputs[:4]], chunk=chunk)
        torch.testing.assert_close(every, torch.stack(states, 1).detach(), atol=1e-11, rtol=1e-9)


@settings(max_examples=15, deadline=None)
@given(L=st.integers(1, 70), chunk=st.sampled_from([None, 4, 16]), seed=st.integers(0, 2**31 - 1))
def test_chunked_scan_float32_is_stable_and_close(L, chunk, seed):
    """Large steps (decays underflow to 0 within a chunk): float32 stays finite and matches the
    float64 recurrence, forward and gradients."""
    inputs, read = _draw(2, L, 5, 4, 6, seed, torch.float32, big=True)
    y = selective_scan_read(*inputs, read, chunk=chunk)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, inputs, gy)
    inputs64 = [x.detach().double().requires_grad_() for x in inputs]
    ref, _ = _reference(*inputs64, read)
    if ref.requires_grad:
        want = torch.autograd.grad(ref, inputs64, gy.double())
    else:  # every query reads before the first key
        want = [torch.zeros_like(x) for x in inputs64]
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in got)
    torch.testing.assert_close(y.double(), ref, atol=1e-4, rtol=1e-4)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("L,expected", [(0, 1), (1, 1), (4, 2), (5, 3), (480, 22), (1984, 45)])
def test_chunk_size_is_about_sqrt_length(L, expected):
    assert chunk_size(L) == expected
    assert chunk_size(L, 7) == max(1, min(7, L))


@settings(max_examples=20, deadline=None)
@given(L=st.integers(1, 9), K=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_depthwise_conv_equals_conv1d_with_gradients(L, K, seed):
    from canvas_plugin_mamba.chunked import causal_depthwise_conv

    torch.manual_seed(seed % 1000)
    conv = torch.nn.Conv1d(3, 3, K, groups=3, padding=K - 1).double()
    x = torch.randn(2, L, 3, dtype=DT, requires_grad=True)
    ref = conv(x.transpose(1, 2))[..., :L].transpose(1, 2)
    out = causal_depthwise_conv(x, conv.weight[:, 0], conv.bias)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    g = torch.randn_like(out)
    params = (x, conv.weight, conv.bias)
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("kernel", ["torch", "cpu"])
def test_scan_custom_ops_pass_torch_opcheck(kernel, scan_kernel_ok):
    """The scan's torch.compile operators: fake shapes and strides, autograd registration and
    schema agree with the eager implementation (what torch.compile relies on), for both scans."""
    from canvas_plugin_mamba import chunked

    scan_kernel_ok(kernel)

    g = torch.Generator().manual_seed(0)
    Bt, L, E, N, Q = 2, 11, 3, 4, 5
    u = torch.randn(Bt, L, E, generator=g, dtype=torch.float64, requires_grad=True)
    delta = torch.rand(Bt, L, E, generator=g, dtype=torch.float64).requires_grad_()
    A = (-torch.rand(E, N, generator=g, dtype=torch.float64)).requires_grad_()
    B = torch.randn(Bt, L, N, generator=g, dtype=torch.float64, requires_grad=True)
    C = torch.randn(Bt, Q, N, generator=g, dtype=torch.float64, requires_grad=True)
    # sparse reads (the segment path), then every position read (the chunked scan)
    for read, Cq in ((torch.tensor([-1, 0, 4, 7, 10]), C), (torch.arange(L), torch.randn(Bt, L, N, dtype=C.dtype))):
        Cq = Cq.detach().requires_grad_()
        torch.library.opcheck(chunked._scan_read_op, (u, delta, A, B, Cq, read, 4, -1, kernel))
        y, hin = chunked._scan_read_op(u, delta, A, B, Cq, read, 4, -1, kernel)
        gy = torch.randn_like(y)
        torch.library.opcheck(chunked._scan_read_backward_op, (gy, u.detach(), delta.detach(), A.detach(), B.detach(),
                                                               Cq.detach(), read, hin.detach(), 4, -1, kernel))


@settings(max_examples=40, deadline=None)
@given(
    Bt=st.integers(1, 2),
    L=st.integers(1, 60),
    E=st.integers(1, 3),
    N=st.integers(1, 3),
    Q=st.integers(1, 8),
    chunk=st.sampled_from([None, 1, 3, 7, 64]),
    block=st.sampled_from([None, 1, 50]),
    borders=st.lists(st.sampled_from(["first", "last", "none", "repeat"]), max_size=3),
    masked=st.floats(0.0, 0.7),
    seed=st.integers(0, 2**31 - 1),
)
def test_segment_reads_equal_step_recurrence(Bt, L, E, N, Q, chunk, block, borders, masked, seed):
    """Sparse reads take the segment path (closed form per segment, ``segments.plan`` is not
    None): float64 reads and gradients equal the step recurrence, with reads at the borders
    (first key, last key, none, repeated) and masked keys (``delta = u = 0``: no step, no write)."""
    from canvas_plugin_mamba import segments

    inputs, _ = _draw(Bt, L, E, N, Q, seed, DT)
    g = torch.Generator().manual_seed(seed + 2)
    read = -((-(torch.arange(Q) + 1) * L) // Q) - 1  # the module's read positions (ceil)
    extra = {"first": 0, "last": L - 1, "none": -1, "repeat": int(read[-1])}
    read = torch.cat([read, torch.tensor([extra[b] for b in borders], dtype=torch.long)])
    read = read[torch.randperm(read.numel(), generator=g)]
    keep = (torch.rand(Bt, L, 1, generator=g) >= masked).to(DT)
    with torch.no_grad():
        inputs[0].mul_(keep)
        inputs[1].mul_(keep)
    C = torch.randn(Bt, read.numel(), N, dtype=DT, generator=g).requires_grad_()
    inputs[4] = C
    assume(segments.plan(read, L, chunk_size(L, chunk)) is not None)  # the segment path runs
    y = selective_scan_read(*inputs, read, chunk=chunk, block=block)
    ref, _ = _reference(*inputs, read)
    torch.testing.assert_close(y, ref, atol=1e-11, rtol=1e-9)
    gy = torch.randn(y.shape, dtype=DT, generator=g)
    got = torch.autograd.grad(y, inputs, gy, allow_unused=True)
    want = torch.autograd.grad(ref, inputs, gy, allow_unused=True) if ref.requires_grad else [None] * 5
    for name, a, b in zip("u delta A B C".split(), got, want):
        a = torch.zeros_like(inputs[0]) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8, msg=name)


def test_dense_reads_scan_and_sparse_reads_use_segments():
    """The path choice: every position read (``Nq == Nk``) scans by chunks; one read per several
    keys, or one read after all of them, goes by segments (none longer than the chunk)."""
    from canvas_plugin_mamba import segments

    L, T = 480, chunk_size(480)
    assert segments.plan(torch.arange(L), L, T) is None
    P = segments.plan(((torch.arange(64) + 1) * L) // 64 - 1, L, T)
    assert P is not None and (P.K, P.Tm) == (64, 8)
    P = segments.plan(torch.tensor([L - 1]), L, T)
    assert P is not None and P.Tm <= T and P.K == -(-L // T)
    assert segments.plan(torch.tensor([-1, -1]), L, T) is None


def test_sparse_reads_after_inference_mode_and_with_an_empty_batch():
    """The segment path's scratch buffers: one call under torch.inference_mode must not break the
    later ordinary calls of the thread (inference tensors cannot be written outside it); a batch
    of 0 gives an empty output and gradient (it used to fail reshaping the empty slot buffer)."""
    from canvas_plugin_mamba.module import MambaAttention

    torch.manual_seed(0)
    m = MambaAttention(8, 2, d_state=4, kernel="mamba_torch")
    q, k = torch.randn(2, 3, 8), torch.randn(2, 16, 8)
    results = {}

    def fresh_thread():  # scratch buffers are per thread: a new thread makes them in inference mode
        with torch.inference_mode():
            want = m(q, k, k).clone()
        x = q.clone().requires_grad_()
        results["got"], results["want"] = m(x, k, k), want  # ordinary call after the inference one
        m(x, k, k).sum().backward()
        results["grad"] = x.grad

    worker = threading.Thread(target=fresh_thread)
    worker.start()
    worker.join()
    torch.testing.assert_close(results["got"], results["want"])
    assert results["grad"] is not None and bool(torch.isfinite(results["grad"]).all())
    empty = torch.zeros(0, 3, 8, requires_grad=True)
    out = m(empty, torch.zeros(0, 16, 8), torch.zeros(0, 16, 8))
    assert out.shape == (0, 3, 8)
    out.sum().backward()
    assert empty.grad.shape == (0, 3, 8)


@settings(max_examples=20, deadline=None)
@given(
    Bt=st.integers(1, 3),
    Q=st.integers(1, 12),
    s=st.integers(2, 6),
    E=st.integers(1, 3),
    N=st.integers(1, 3),
    block=st.sampled_from([None, 1, 50]),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_segment_views_equal_step_recurrence(Bt, Q, s, E, N, block, shuffle, seed):
    """The runtime's key sets (``L = s Q``, every segment ``s`` keys long) take the segment path
    without gathers: the slots are views of the inputs (``dense``) and, with the reads in order,
    the read states are the segment ends (``direct``).  Reads and gradients equal the step
    recurrence in float64, also with the reads shuffled (dense, not direct)."""
    from canvas_plugin_mamba import segments

    L = s * Q
    inputs, _ = _draw(Bt, L, E, N, Q, seed, DT)
    read = ((torch.arange(Q) + 1) * L) // Q - 1
    if shuffle:
        read = read[torch.randperm(Q, generator=torch.Generator().manual_seed(seed))]
    P = segments.plan(read, L, max(s, chunk_size(L)))
    assume(P is not None)
    assert P.dense and P.direct == (not shuffle or torch.equal(read, read.sort().values))
    y = selective_scan_read(*inputs, read, chunk=max(s, chunk_size(L)), block=block)
    ref, _ = _reference(*inputs, read)
    torch.testing.assert_close(y, ref, atol=1e-11, rtol=1e-9)
    gy = torch.randn(y.shape, dtype=DT, generator=torch.Generator().manual_seed(seed + 1))
    got = torch.autograd.grad(y, inputs, gy)
    want = torch.autograd.grad(ref, inputs, gy)
    for name, a, b in zip("u delta A B C".split(), got, want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8, msg=name)
