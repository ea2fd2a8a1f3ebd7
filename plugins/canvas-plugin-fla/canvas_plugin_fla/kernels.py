"""The ``fla_rwkv`` kernel: an ``nn.Module`` with the signature of the core's ``wkv_scan``.

Contract (what ``RWKVAttention(kernel="fla_rwkv")`` calls)::

    wkv = create_kernel("fla_rwkv")          # FlaWKV()
    out = wkv(k, v, w, u, key_ok=None)       # (B, L, C)

``k, v``: ``(B, L, C)``; ``w``: ``(C,)`` decay *rate* (> 0, the state is multiplied by
``exp(-w)`` per step); ``u``: ``(C,)`` bonus of the current key; ``key_ok``: optional bool
``(B|1, L)``, keys to leave out of the sums.  Output ``wkv_t`` as in ``wkv_scan``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from canvas_core.errors import UnavailableError

__all__ = ["FlaWKV", "fla_wkv"]

_VERY_NEG = -1e38  # "minus infinity" the kernel's log-space arithmetic accepts


class FlaWKV(nn.Module):
    """RWKV-4 WKV via ``fla.ops.rwkv4.fused_recurrent_rwkv4`` (CUDA only)."""

    def __init__(self, **_options) -> None:
        super().__init__()
        try:
            from fla.ops.rwkv4 import fused_recurrent_rwkv4
        except Exception as exc:
            raise UnavailableError(
                f"kernel 'fla_rwkv' needs flash-linear-attention with fla.ops.rwkv4 and triton on CUDA "
                f"({type(exc).__name__}: {exc}); pip install 'canvas-plugin-fla[cuda]', or use kernel='auto'") from exc
        self._fn = fused_recurrent_rwkv4

    def forward(self, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor,
                key_ok: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not k.is_cuda:
            raise UnavailableError(f"kernel 'fla_rwkv' runs on CUDA tensors only, got {k.device}")
        return fla_wkv(self._fn, k, v, w, u, key_ok)


def fla_wkv(fn, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor,
            key_ok: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The core's ``wkv_scan`` contract on top of fla's ``fused_recurrent_rwkv4(w, u, k, v, state)``.

    fla's convention: ``w`` is the raw decay parameter (the kernel uses ``-exp(w)`` as the
    per-step log-decay), and ``state`` is ``(B, 3, 1, C)`` = (alpha, beta, eps) -- numerator
    sum, denominator sum, running max exponent; it returns ``(wkv (B, L, C), state (B, 3, 1, C))``.
    """
    B, L, C = k.shape
    if L == 0:
        return k.new_zeros(B, 0, C)
    k = k.float()  # before the fill: -1e38 does not fit in float16 (torch refuses the fill)
    if key_ok is not None:  # a masked key contributes e^k = 0 to both sums
        k = k.masked_fill(~key_ok.to(torch.bool).unsqueeze(-1), _VERY_NEG)
    # fla takes the raw parameter ``w`` and uses -exp(w) as log-decay: pass log(rate)
    w_raw = torch.log(w.float())
    state = torch.zeros(B, 3, 1, C, device=k.device, dtype=torch.float32)
    state[:, 2] = _VERY_NEG  # (alpha, beta, eps): empty sums, running max exponent -inf
    wkv, _ = fn(w_raw, u.float().contiguous(), k.contiguous(), v.float().contiguous(), state)
    if key_ok is not None:  # as wkv_scan: 0 until the first allowed key (fla returns v_t there)
        seen = key_ok.to(torch.bool).cumsum(dim=1) > 0
        wkv = wkv * seen.unsqueeze(-1).to(wkv.dtype)
    return wkv.to(v.dtype)
