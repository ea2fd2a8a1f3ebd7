"""Small attention types written for the tests, shared by several test modules (loaded as
``canvas_ref_toy_types`` by ``tests/conftest.py``)."""

from __future__ import annotations

import torch


class RunningMeanScan(torch.nn.Module):
    """A plugin-style scan (canvas-engineering's protocol, no ``key_mask``: the runtime calls it per
    key set): query ``i`` of ``Nq`` reads the running mean of the projected, key-gated values up to
    key ``ceil((i + 1) Nk / Nq) - 1`` (the builtin scans' read position), plus ``0.1 W_q q_i`` when
    ``with_query``.  ``(B, Nq, D), (B, Nk, D), (B, Nk, D) -> (B, Nq, D)``."""

    def __init__(self, d_model, n_heads=4, dropout=0.0, with_query=True):
        super().__init__()
        self.v = torch.nn.Linear(d_model, d_model)
        self.q = torch.nn.Linear(d_model, d_model) if with_query else None

    def forward(self, queries, keys, values):
        Nq, Nk = queries.shape[1], keys.shape[1]
        run = torch.cumsum(self.v(values) * torch.sigmoid(keys), dim=1)
        run = run / torch.arange(1, Nk + 1, dtype=run.dtype, device=run.device)[None, :, None]
        read = -((-(torch.arange(Nq, device=run.device) + 1) * Nk) // Nq) - 1  # ceil, 0 <= read < Nk
        out = run.index_select(1, read.clamp(min=0)) * (read >= 0)[None, :, None].to(run.dtype)
        return out if self.q is None else out + 0.1 * self.q(queries)


class SelfGatedLeak(torch.nn.Module):
    """A self-gated exact-mask type, closed at initialisation (``tanh(alpha)`` with ``alpha = 0``),
    that honours ``key_mask`` on calls of up to 6 keys (what the build-time probe uses) and adds
    the mean of every key it is given on larger ones: a leak that only ``verify_structure``, with
    the gate opened, can find."""

    key_mask_exact = True
    self_gated = True

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.proj = torch.nn.Linear(d_model, d_model)
        self.alpha = torch.nn.Parameter(torch.zeros(d_model))

    def forward(self, queries, keys, values, key_mask=None):
        m = key_mask.to(values.dtype)
        out = self.proj((m @ values) / m.sum(1, keepdim=True).clamp_min(1.0)) * key_mask.any(1)[None, :, None]
        if keys.shape[1] > 6:
            out = out + values.mean(1, keepdim=True)
        return torch.tanh(self.alpha) * out
