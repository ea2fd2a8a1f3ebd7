"""Selective scans (S6) in mamba-ssm's layout.

Both functions compute, per batch ``b``, channel ``e`` and state ``n``::

    h_t = exp(delta_t A) * h_{t-1} + delta_t * B_t * u_t        (h_{-1} = 0)
    y_t = C_t . h_t + D * u_t ;   y_t *= silu(z_t)  (when z is given)

with ``u, delta, z: (B, E, L)``, ``A: (E, N)``, ``B, C: (B, N, L)``, ``D: (E,)``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from canvas_plugin_mamba.chunked import all_states, selective_scan_read

__all__ = ["selective_states", "selective_scan_torch", "selective_scan_mamba_ssm"]


def selective_states(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    chunk: Optional[int] = None,
) -> torch.Tensor:
    """All hidden states ``h_t``, shape ``(Bt, L, E, N)``, of the recurrence above.

    ``chunk=1`` is the plain step-by-step recurrence (the reference); otherwise the chunked scan
    of :mod:`canvas_plugin_mamba.chunked` runs (``chunk`` positions per chunk, default
    ``ceil(sqrt(L))``).  Computed in float32 at least.  No gradient through the chunked form
    (use :func:`selective_scan_torch` or :func:`~canvas_plugin_mamba.chunked.selective_scan_read`).
    """
    wd = torch.float64 if u.dtype == torch.float64 else torch.float32
    Bt, E, L = u.shape
    N = A.shape[1]
    if L == 0:
        return u.new_zeros(Bt, 0, E, N, dtype=wd)
    u_t, d_t, B_t = (x.to(wd).transpose(1, 2) for x in (u, delta, B))
    if chunk != 1:
        return all_states(u_t, d_t, A.to(wd), B_t, chunk)
    decay = torch.exp(d_t.unsqueeze(-1) * A.to(wd))  # (Bt, L, E, N)
    x = (d_t * u_t).unsqueeze(-1) * B_t.unsqueeze(2)
    h = torch.zeros(Bt, E, N, dtype=wd, device=u.device)
    outs = []
    for t in range(L):
        h = decay[:, t] * h + x[:, t]
        outs.append(h)
    return torch.stack(outs, dim=1)


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
    wd = torch.float64 if u.dtype == torch.float64 else torch.float32
    Bt, E, L = u.shape
    u_t, d_t = u.to(wd).transpose(1, 2), delta.to(wd).transpose(1, 2)
    read = torch.arange(L, device=u.device)
    y = selective_scan_read(
        u_t, d_t, A.to(wd), B.to(wd).transpose(1, 2), C.to(wd).transpose(1, 2), read
    ).transpose(1, 2)  # (Bt, E, L)
    if D is not None:
        y = y + D.view(1, -1, 1).to(y.dtype) * u.to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    y = y.to(u.dtype)
    if return_last_state:
        N = A.shape[1]
        if L:
            last = all_states(u_t, d_t, A.to(wd), B.to(wd).transpose(1, 2))[:, -1]
        else:
            last = u.new_zeros(Bt, E, N)
        return y, last.to(u.dtype)
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
