"""Selective scans (S6) in mamba-ssm's layout.

Both functions compute, per batch ``b``, channel ``e`` and state ``n``::

    h_t = exp(delta_t A) * h_{t-1} + delta_t * B_t * u_t        (h_{-1} = 0)
    y_t = C_t . h_t + D * u_t ;   y_t *= silu(z_t)  (when z is given)

with ``u, delta, z: (B, E, L)``, ``A: (E, N)``, ``B, C: (B, N, L)``, ``D: (E,)``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["selective_states", "selective_scan_torch", "selective_scan_mamba_ssm"]


def selective_states(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    chunk: Optional[int] = None,
) -> torch.Tensor:
    """All hidden states ``h_t``, shape ``(Bt, L, E, N)``, of the recurrence above.

    Runs in chunks of ``chunk`` steps (default: 1 on CPU, where the plain step recurrence is
    cheapest; elsewhere sized so a chunk's pairwise tensor stays below ~16M elements): inside a
    chunk the states are computed in parallel from
    cumulative log-decays (``h_t = exp(S_t - S_s) h_s + sum_j exp(S_t - S_j) x_j``, all exponents
    <= 0, so nothing overflows); chunks are chained sequentially.  Computed in float32 at least.
    """
    wd = torch.float64 if u.dtype == torch.float64 else torch.float32
    Bt, E, L = u.shape
    N = A.shape[1]
    if L == 0:
        return u.new_zeros(Bt, 0, E, N, dtype=wd)
    dA = delta.to(wd).transpose(1, 2).unsqueeze(-1) * A.to(wd)  # (Bt, L, E, N), <= 0
    x = (delta.to(wd) * u.to(wd)).transpose(1, 2).unsqueeze(-1) * B.to(wd).transpose(
        1, 2
    ).unsqueeze(2)
    h = torch.zeros(Bt, E, N, dtype=wd, device=u.device)
    if chunk is None:  # CPU: the step recurrence is cheapest; GPU: parallel chunks
        chunk = (
            1
            if u.device.type == "cpu"
            else max(1, min(64, int(math.sqrt((1 << 24) / max(1, Bt * E * N)))))
        )
    outs = []
    if chunk == 1:
        decay = torch.exp(dA)  # one vectorised exp; the loop only multiplies and adds
        for t in range(L):
            h = decay[:, t] * h + x[:, t]
            outs.append(h)
        return torch.stack(outs, dim=1)
    for s in range(0, L, chunk):
        da, xx = dA[:, s : s + chunk], x[:, s : s + chunk]  # (Bt, T, E, N)
        T = da.shape[1]
        S = da.cumsum(dim=1)  # S_t = sum_{k<=t} dA_k
        # pairwise decay exp(S_t - S_j) for j <= t, 0 otherwise: (Bt, T, T, E, N)
        diff = S.unsqueeze(2) - S.unsqueeze(1)
        causal = torch.ones(T, T, dtype=torch.bool, device=u.device).tril()
        diff = diff.masked_fill(~causal.view(1, T, T, 1, 1), float("-inf"))
        within = (torch.exp(diff) * xx.unsqueeze(1)).sum(dim=2)  # (Bt, T, E, N)
        states = within + torch.exp(S) * h.unsqueeze(1)
        outs.append(states)
        h = states[:, -1]
    return torch.cat(outs, dim=1)


def selective_scan_torch(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Pure-PyTorch equivalent of ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``.

    Returns ``y (B, E, L)`` in ``u``'s dtype (and the last state ``(B, E, N)`` when asked).
    """
    if delta_bias is not None:
        delta = delta + delta_bias.view(1, -1, 1).to(delta.dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    states = selective_states(u, delta, A, B)  # (Bt, L, E, N)
    y = torch.einsum("blen,bnl->bel", states, C.to(states.dtype))
    if D is not None:
        y = y + D.view(1, -1, 1).to(y.dtype) * u.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    y = y.to(u.dtype)
    if return_last_state:
        last = states[:, -1] if states.shape[1] else u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
        return y, last
    return y


def selective_scan_mamba_ssm(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
):
    """mamba-ssm's fused CUDA ``selective_scan_fn`` (imported lazily; CUDA tensors only)."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn(
        u,
        delta,
        A,
        B,
        C,
        D=D,
        z=z,
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        return_last_state=return_last_state,
    )
