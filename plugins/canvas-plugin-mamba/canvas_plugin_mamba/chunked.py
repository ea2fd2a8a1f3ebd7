"""Chunked selective scan (S6) on any device, with a hand-written backward.

The recurrence, per batch row ``b``, channel ``e`` and state ``n`` (``h_{-1} = 0``)::

    h_t = exp(delta_t A) * h_{t-1} + delta_t * u_t * B_t

is computed in chunks of ``T`` positions: every chunk is scanned at once (a loop over the ``T``
positions inside a chunk, each step running on all chunks together), the states entering the
chunks are then chained by a loop over the chunks (on ``(Bt, E, N)`` tensors), and the outputs are
read where they are needed.  With ``T ~ sqrt(L)`` that is about ``2 sqrt(L)`` vectorised steps
instead of ``L``.  Every factor is ``exp(delta A) <= 1`` (``A < 0``, ``delta >= 0``), so nothing
overflows in float32; float64 gives the step recurrence to rounding.

:func:`selective_scan_read` reads ``y_q = C_q . h_{read_q}`` at given positions (the queries of a
``mamba`` connection read at their causal read position); the backward is a reverse scan run the
same way (no per-step autograd graph, no per-step zero-filled gradient tensors).  When the reads
are sparse (fewer queries than keys) it takes the closed form per segment of
:mod:`canvas_plugin_mamba.segments` instead, which forms no state between two reads.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from canvas_core.errors import CanvasTypeError, UnavailableError
from canvas_core.extend import first_order_only, isqrt, scratch
from canvas_plugin_mamba import cpu_kernel, segments
from canvas_plugin_mamba.conv_op import causal_depthwise_conv  # re-exported: it lived here before

__all__ = ["selective_scan_read", "chunk_size", "causal_depthwise_conv", "all_states"]


def chunk_size(L: int, chunk: Optional[int] = None) -> int:
    """Positions per chunk: ``chunk`` when given, else ``ceil(sqrt(L))`` (at least 1)."""
    if chunk is not None:
        return max(1, min(int(chunk), max(L, 1)))
    return max(1, isqrt(max(L - 1, 0)) + 1)  # isqrt: math.isqrt that torch.compile traces


#: elements of one work block (rows x chunks x T x E x N); blocks stay in cache and their
#: buffers are reused, so no large tensor is allocated (and page-faulted) per step
BLOCK_ELEMS = 1 << 19
#: exp(x) = exp2(x * LOG2E); exp2 is the cheaper one on CPUs
LOG2E = 1.0 / math.log(2.0)


def _ws(slot: str, shape, like: torch.Tensor) -> torch.Tensor:
    """The extension surface's per-thread :func:`~canvas_core.extend.scratch`, under this
    module's own slot names (temporaries only: nothing returned or saved for backward)."""
    return scratch("mamba." + slot, shape, like)


def _padded(slot: str, x: torch.Tensor, Lp: int) -> torch.Tensor:
    """``x (Bt, L, ...)`` zero-padded along dim 1 to ``Lp`` (``x`` itself when ``L == Lp``)."""
    L = x.shape[1]
    if L == Lp:
        return x
    out = _ws(slot, (x.shape[0], Lp) + tuple(x.shape[2:]), x)
    out[:, :L] = x
    out[:, L:] = 0
    return out


class _Plan:
    """Chunking of one call: padded per-chunk views of the small inputs and the work blocks.

    States are laid out ``(..., N, E)`` (channels innermost).  ``d, du``: ``(Bt, nC, T, E)``
    (``delta``, ``delta * u``; zero padded, so padding has decay 1 and input 0); ``Bp``:
    ``(Bt, nC, T, N)``; ``S``: chunk-local inclusive sums of ``delta``; ``R = exp(A S_end)``
    ``(Bt, nC, N, E)``: the decay over each whole chunk.  Reads: ``pos`` (clamped positions),
    ``cr`` (their chunk), ``Pr = exp(A S_pos)`` ``(Bt, Q, N, E)``: the decay from a chunk's
    start to the read, inclusive.
    """

    def __init__(self, u, delta, At, Bm, read, T, block=None):
        Bt, L, E = delta.shape
        N = At.shape[0]
        self.Bt, self.L, self.E, self.N, self.T = Bt, L, E, N, T
        nC = self.nC = -(-L // T)
        Lp = nC * T
        self.d = _padded("d", delta, Lp).view(Bt, nC, T, E)
        du = _ws("du", (Bt, Lp, E), delta)
        torch.mul(delta, u, out=du[:, :L])
        du[:, L:] = 0
        self.du = du.view(Bt, nC, T, E)
        self.Bp = _padded("B", Bm, Lp).view(Bt, nC, T, N)
        self.A2 = At * LOG2E  # (N, E)
        self.pos = read.clamp(min=0)
        self.cr = torch.div(self.pos, T, rounding_mode="floor")
        tri = torch.ones(T, T, dtype=delta.dtype, device=delta.device).tril()
        S = torch.matmul(tri, self.d)  # inclusive sums (cumsum over a middle dim is slow)
        self.R = torch.mul(S[:, :, -1].unsqueeze(-2), self.A2, out=_ws("R", (Bt, nC, N, E), delta)).exp2_()
        Sr = S.reshape(Bt, Lp, E).index_select(1, self.pos)
        Q = read.shape[0]
        self.Pr = torch.mul(Sr.unsqueeze(-2), self.A2, out=_ws("Pr", (Bt, Q, N, E), delta)).exp2_()
        # work blocks: K chunks of rb rows
        per_chunk = T * E * N
        budget = BLOCK_ELEMS if block is None else block
        K = max(1, min(nC, budget // per_chunk))
        rb = max(1, min(Bt, budget // (nC * per_chunk))) if K == nC else 1
        self.K, self.rb = K, rb
        order = torch.argsort(self.cr, stable=True)
        bounds = torch.searchsorted(self.cr[order], torch.arange(0, nC + K, K, device=read.device))
        self.order, self.bounds = order, bounds.tolist()
        self.block_elems = rb * K * T * E * N

    def blocks(self):
        """``(rows slice, c0, c1, query indices of the reads in chunks [c0, c1))``."""
        for r0 in range(0, self.Bt, self.rb):
            rows = slice(r0, min(self.Bt, r0 + self.rb))
            for i, c0 in enumerate(range(0, self.nC, self.K)):
                c1 = min(self.nC, c0 + self.K)
                qi = self.order[self.bounds[i]:self.bounds[i + 1]]
                yield rows, c0, c1, qi

    def buf(self, i, rows, c0, c1):
        shape = (rows.stop - rows.start, c1 - c0, self.T, self.N, self.E)
        n = shape[0] * shape[1] * shape[2] * shape[3] * shape[4]
        return _ws(f"block{i}", (self.block_elems,), self.d)[:n].view(shape)

    def inputs(self, rows, c0, c1):
        """Decays ``a`` and inputs ``x`` of a block, ``(rb, K, T, N, E)``, in reused buffers."""
        a = self.buf(0, rows, c0, c1)
        torch.mul(self.d[rows, c0:c1].unsqueeze(-2), self.A2, out=a)
        torch.exp2(a, out=a)
        x = self.buf(1, rows, c0, c1)
        torch.mul(self.du[rows, c0:c1].unsqueeze(-2), self.Bp[rows, c0:c1].unsqueeze(-1), out=x)
        return a, x


def _scan(a: torch.Tensor, x: torch.Tensor, start: Optional[torch.Tensor], reverse: bool = False) -> None:
    """In place, inside every chunk of a block ``(rb, K, T, N, E)`` at once: ``x`` becomes the
    states ``h_t = a_t h_{t-1} + x_t`` from ``start (rb, K, N, E)`` (None: zero) entering each
    chunk; ``reverse``: the adjoint ``g_t = x_t + a_{t+1} g_{t+1}`` from the chunk's end."""
    T = a.shape[2]
    av, xv = a.unbind(2), x.unbind(2)
    if reverse:
        for t in range(T - 2, -1, -1):
            xv[t].addcmul_(av[t + 1], xv[t + 1])
        return
    if start is not None:
        xv[0].addcmul_(av[0], start)
    for t in range(1, T):
        xv[t].addcmul_(av[t], xv[t - 1])


def _saved_shape(u, A, C, T: int, kernel: str = "torch"):
    """Shape of the states kept for the backward: ``(Bt, nC, N, E)``, the state entering each of
    the ``nC`` chunks, for the compiled scan (``kernel="cpu"``); ``(Bt, nC + Q, N, E)`` for this
    module's, with room for the state at each segment's end (at most ``Q + nC`` of them)."""
    Bt, L, _ = u.shape
    return (Bt, -(-L // T) + (0 if kernel == "cpu" else C.shape[1]), A.shape[1], A.shape[0])


def _segment_ends(saved: torch.Tensor, u: torch.Tensor, A: torch.Tensor, S) -> torch.Tensor:
    """On the segment path, the states at the segment ends ``(Bt, K, N, E)``: a view of the first
    ``Bt * K * N * E`` elements of the op's saved output (the rest is zero)."""
    return saved.reshape(-1)[: u.shape[0] * S.K * A.numel()].view(u.shape[0], S.K, A.shape[1], A.shape[0])


def _scan_read_forward(u, delta, A, Bm, C, read, T: int, block: Optional[int], kernel: str = "torch"):
    """``(y (Bt, Q, E), saved)``: the reads and the states the backward starts from (see
    :func:`_saved_shape`): ``kernel="cpu"`` (:mod:`canvas_plugin_mamba.cpu_kernel`) or dense
    reads: the state entering each chunk; sparse reads (:mod:`canvas_plugin_mamba.segments`):
    the state at each segment's end."""
    if kernel == "cpu":
        saved = u.new_empty(_saved_shape(u, A, C, T, kernel))
        return cpu_kernel.forward(u, delta, A, Bm, C, read, T, saved), saved
    S = segments.plan(read, u.shape[1], T)
    if S is not None:  # the segment-end states fill the first Bt * K * N * E elements
        saved = u.new_empty(_saved_shape(u, A, C, T))
        ends = _segment_ends(saved, u, A, S)
        saved.view(-1)[ends.numel():].zero_()
        y, _ = segments.forward(u, delta, A, Bm, C, S, block, out=ends.view(-1))
        return y, saved
    saved = u.new_zeros(_saved_shape(u, A, C, T))
    At = A.t().contiguous()  # (N, E)
    P = _Plan(u, delta, At, Bm, read, T, block)
    Bt, E, N, nC = P.Bt, P.E, P.N, P.nC
    ends = _ws("ends", (Bt, nC, N, E), u)  # each chunk's last state, from a zero start
    hr = _ws("hr", (Bt, C.shape[1], N, E), u)  # the state each query reads
    for rows, c0, c1, qi in P.blocks():
        a, x = P.inputs(rows, c0, c1)
        _scan(a, x, None)
        ends[rows, c0:c1] = x[:, :, -1]
        if qi.numel():
            loc = x.view(x.shape[0], -1, N, E).index_select(1, P.pos[qi] - c0 * T)
            hr[rows].index_copy_(1, qi, loc)
    Hin = saved[:, :nC]  # the state entering each chunk: H_{c+1} = R_c H_c + ends_c
    for c in range(nC - 1):
        torch.addcmul(ends[:, c], P.R[:, c], Hin[:, c], out=Hin[:, c + 1])
    hr.addcmul_(P.Pr, torch.index_select(Hin, 1, P.cr, out=_ws("gather", hr.shape, u)))
    y = torch.matmul(C.unsqueeze(-2), hr).squeeze(-2)  # (Bt, Q, E)
    y = y * (read >= 0).view(1, -1, 1).to(y.dtype)
    return y, saved


def _scan_read_backward(gy, u, delta, A, Bm, C, read, saved, T: int, block: Optional[int], kernel: str = "torch"):
    """Gradients of ``u, delta, A, Bm, C`` from ``gy (Bt, Q, E)`` (see the module docstring)."""
    if kernel == "cpu":
        return cpu_kernel.backward(gy, u, delta, A, Bm, C, read, T, saved)
    S = segments.plan(read, u.shape[1], T)  # the forward's choice (same inputs)
    if S is not None:
        return segments.backward(gy, u, delta, A, Bm, C, _segment_ends(saved, u, A, S), S, block)
    At = A.t().contiguous()
    P = _Plan(u, delta, At, Bm, read, T, block)
    Bt, L, E, N, nC = P.Bt, P.L, P.E, P.N, P.nC
    Hin = saved[:, :nC]
    Q = read.shape[0]
    gy = gy * (read >= 0).view(1, -1, 1).to(gy.dtype)
    gC = u.new_empty(Bt, Q, N)
    ghr = torch.mul(C.unsqueeze(-1), gy.unsqueeze(-2), out=_ws("ghr", (Bt, Q, N, E), u))
    # the gradient reaching each chunk's end from the later chunks: G_{c-1} = R_c G_c + K_c,
    # K_c = sum over the reads r in chunk c of exp(A S_r) ghr_r
    Kc = _ws("Kc", (Bt, nC, N, E), u).zero_()
    Kc.index_add_(1, P.cr, torch.mul(P.Pr, ghr, out=_ws("gather", ghr.shape, u)))
    Gout = _ws("Gout", (Bt, nC, N, E), u)
    Gout[:, -1].zero_()
    for c in range(nC - 1, 0, -1):
        torch.addcmul(Kc[:, c], P.R[:, c], Gout[:, c], out=Gout[:, c - 1])
    g_du = _ws("g_du", (Bt, nC, T, E), u)
    g_dA = _ws("g_dA", (Bt, nC, T, E), u)
    gB = u.new_empty(Bt, nC, T, N)
    gA = torch.zeros_like(At)
    for rows, c0, c1, qi in P.blocks():
        a, h = P.inputs(rows, c0, c1)
        _scan(a, h, Hin[rows, c0:c1])  # every state of the block
        G = P.buf(2, rows, c0, c1).zero_()
        rb, K = G.shape[0], G.shape[1]
        if qi.numel():
            lp = P.pos[qi] - c0 * T
            G.view(rb, -1, N, E).index_add_(1, lp, ghr[rows].index_select(1, qi))
            hq = h.view(rb, -1, N, E).index_select(1, lp)  # the states the queries read
            gC[rows].index_copy_(1, qi, torch.matmul(hq, gy[rows].index_select(1, qi).unsqueeze(-1)).squeeze(-1))
        G[:, :, -1].add_(Gout[rows, c0:c1])
        _scan(a, G, None, reverse=True)  # G_t: every dL/dh_t of the block
        Gf = G.view(-1, N, E)
        g_du[rows, c0:c1] = torch.matmul(P.Bp[rows, c0:c1].reshape(-1, 1, N), Gf).view(rb, K, T, E)
        scratch = P.buf(3, rows, c0, c1)
        gB[rows, c0:c1] = torch.mul(G, P.du[rows, c0:c1].unsqueeze(-2), out=scratch).sum(-1)
        # dL/d(delta A)_t = G_t * a_t * h_{t-1}, built in a's buffer
        a[:, :, 1:].mul_(h[:, :, :-1])
        a[:, :, 0].mul_(Hin[rows, c0:c1])
        gdA = a.mul_(G)
        gA += torch.mul(gdA, P.d[rows, c0:c1].unsqueeze(-2), out=scratch).view(-1, N, E).sum(0)
        g_dA[rows, c0:c1] = gdA.mul_(At).sum(-2)
    g_du = g_du.view(Bt, -1, E)[:, :L]
    g_delta = g_dA.view(Bt, -1, E)[:, :L] + g_du * u
    gB = gB.view(Bt, -1, N)[:, :L]
    return g_du * delta, g_delta, gA.t().contiguous(), gB.contiguous(), gC




# The scan is one operator for torch.compile: its eager implementation (scratch buffers,
# ``out=`` writes, Python loops over blocks, or the compiled kernel) is opaque to dynamo, which
# would otherwise break the graph at every such call.  Shapes for tracing come from the fake
# implementations below.  ``kernel``: ``"torch"`` (this module) or ``"cpu"`` (the compiled scan).
@torch.library.custom_op("canvas_mamba::scan_read_v2", mutates_args=())
def _scan_read_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, Bm: torch.Tensor, C: torch.Tensor,
                  read: torch.Tensor, T: int, block: int, kernel: str) -> Tuple[torch.Tensor, torch.Tensor]:
    # autocast reaches into an operator's body: its matmuls would return bf16 where the fake
    # implementation (and the backward) expect the inputs' dtype
    with torch.autocast(u.device.type, enabled=False):
        return _scan_read_forward(u, delta, A, Bm, C, read, T, None if block < 0 else block, kernel)


@_scan_read_op.register_fake
def _(u, delta, A, Bm, C, read, T, block, kernel):
    Bt, L, E = u.shape
    return u.new_empty(Bt, C.shape[1], E), u.new_empty(_saved_shape(u, A, C, T, kernel))


@torch.library.custom_op("canvas_mamba::scan_read_backward_v2", mutates_args=())
def _scan_read_backward_op(gy: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                           Bm: torch.Tensor, C: torch.Tensor, read: torch.Tensor, Hin: torch.Tensor, T: int,
                           block: int, kernel: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                             torch.Tensor]:
    with torch.autocast(u.device.type, enabled=False):
        return _scan_read_backward(gy.contiguous(), u, delta, A, Bm, C, read, Hin, T,
                                   None if block < 0 else block, kernel)


@_scan_read_backward_op.register_fake
def _(gy, u, delta, A, Bm, C, read, Hin, T, block, kernel):
    return (torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A), torch.empty_like(Bm),
            torch.empty_like(C))


def _setup_context(ctx, inputs, output):
    u, delta, A, Bm, C, read, T, block, kernel = inputs
    ctx.save_for_backward(u, delta, A, Bm, C, read, output[1])
    ctx.T, ctx.block, ctx.kernel = T, block, kernel
    # the saved states are an output only to reach the backward: no zero-filled gradient for them
    # (a multi-megabyte fill per call); the reads' gradient is then None when the reads are unused
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _backward(ctx, gy, _g_hin):
    u, delta, A, Bm, C, read, Hin = ctx.saved_tensors
    if gy is None:
        return (None,) * 9
    gu, gdelta, gA, gB, gC = _scan_read_backward_op(gy, u, delta, A, Bm, C, read, Hin, ctx.T, ctx.block, ctx.kernel)
    return first_order_only("mamba's selective scan", (gu, gdelta, gA, gB, gC, None, None, None, None))


_scan_read_op.register_autograd(_backward, setup_context=_setup_context)


def selective_scan_read(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    read: torch.Tensor,
    chunk: Optional[int] = None,
    block: Optional[int] = None,
    kernel: str = "auto",
) -> torch.Tensor:
    """``y_q = C_q . h_{read_q}`` of the selective scan, ``(Bt, Q, E)``.

    Args:
        u, delta: ``(Bt, L, E)`` input and step sizes (``delta >= 0``).
        A: ``(E, N)``, ``A <= 0``.
        B: ``(Bt, L, N)`` input selection.
        C: ``(Bt, Q, N)`` readout of each query.
        read: ``(Q,)`` long, the position each query reads, in ``[-1, L - 1]``; ``-1`` reads
            nothing (``y_q = 0``).
        chunk: positions per chunk (default ``ceil(sqrt(L))``); with sparse reads, the longest
            segment (:mod:`canvas_plugin_mamba.segments`).
        block: elements per work block (default :data:`BLOCK_ELEMS`).
        kernel: ``"torch"`` (this module's chunked scan), ``"cpu"`` (the compiled CPU scan of
            :mod:`canvas_plugin_mamba.cpu_kernel`; ``chunk``: its checkpoint interval) or
            ``"auto"`` (``"cpu"`` where :func:`cpu_kernel.usable_for` allows it).

    All tensors share one floating dtype (computed in it: pass float32 or float64).
    Differentiable in ``u, delta, A, B, C``.
    """
    Bt, L, E = u.shape
    Q = C.shape[1]
    if L == 0 or Q == 0 or Bt == 0:  # nothing to scan (a batch of 0 has no segment rows)
        zero = (u.sum() + delta.sum() + A.sum() + B.sum() + C.sum()) * 0  # keeps the graph
        return zero + u.new_zeros(Bt, Q, E)
    u, delta, B, C = (x.contiguous() for x in (u, delta, B, C))
    kernel = scan_kernel(kernel, u, A.shape[1])
    y, _ = _scan_read_op(u, delta, A, B, C, read, chunk_size(L, chunk), -1 if block is None else int(block), kernel)
    return y


def scan_kernel(kernel: str, x: torch.Tensor, state_size: int) -> str:
    """The scan operators' ``kernel`` argument for a request ``"auto"`` / ``"cpu"`` / ``"torch"``."""
    if kernel == "auto":
        return "cpu" if cpu_kernel.usable_for(x, state_size) else "torch"
    if kernel == "cpu":
        if state_size > cpu_kernel.MAX_STATE:
            raise UnavailableError(f"selective_scan_read: kernel='cpu' holds state sizes up to {cpu_kernel.MAX_STATE}, "
                                   f"A has {state_size} columns; use kernel='auto' or 'torch'")
        cpu_kernel.require()
        return kernel
    if kernel != "torch":
        raise CanvasTypeError(f"selective_scan_read: kernel must be 'auto', 'cpu' or 'torch', got {kernel!r}")
    return kernel


def all_states(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, chunk: Optional[int] = None
) -> torch.Tensor:
    """Every state ``(Bt, L, E, N)`` by the same chunked scan (no gradient)."""
    Bt, L, E = u.shape
    N = A.shape[1]
    if L == 0:
        return u.new_zeros(Bt, 0, E, N)
    with torch.no_grad():
        P = _Plan(u, delta, A.t().contiguous(), B, torch.arange(L, device=u.device), chunk_size(L, chunk))
        out = u.new_empty(Bt, P.nC, P.T, N, E)
        H = u.new_zeros(0)
        for rows, c0, c1, _ in P.blocks():
            if c0 == 0:
                H = u.new_zeros(rows.stop - rows.start, N, E)
            a, x = P.inputs(rows, c0, c1)
            _scan(a, x, None)
            starts = []
            for c in range(c1 - c0):
                starts.append(H)
                H = torch.addcmul(x[:, c, -1], P.R[rows, c0 + c], H)
            a, x = P.inputs(rows, c0, c1)
            _scan(a, x, torch.stack(starts, 1))
            out[rows, c0:c1] = x
    return out.view(Bt, -1, N, E)[:, :L].transpose(-1, -2)
