"""Scene-relative 2-D rotary position embeddings (RoPE).

A head of width ``dh`` rotates its first ``r = 4 * (dh // 4)`` channels: ``r / 4`` frequencies
act on the ``y`` coordinate and ``r / 4`` on ``x``; channel ``i`` of the first half pairs with
channel ``i + r/2``.  Frequencies are geometric, ``omega_k = (pi / 2) * max_freq ** (k / (n - 1))``
(``n = r / 4``), so the lowest never wraps over the scene (``[-1, 1]``) and the highest resolves
about ``max_freq`` cells per unit.  Since ``<R(p) q, R(p') k> = <q, R(p' - p) k>``, attention
logits depend on positions only through their differences: moving every coordinate by the same
offset leaves attention unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from canvas_core.errors import CanvasTypeError, ShapeError

__all__ = ["SceneRoPE", "coord_dtype"]


def coord_dtype(*ts: torch.Tensor) -> torch.dtype:
    """The dtype of scene coordinates and RoPE angles for the tensors ``ts``: float32, or float64
    when one of them is float64 (a float64 module or viewpoint: gradcheck-exact); never below
    float32, whatever the model's dtype."""
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


class SceneRoPE(nn.Module):
    """Rotary embedding of ``(y, x)`` scene coordinates for heads of width ``head_dim``.

    Args:
        head_dim: channels per head (channels beyond ``4 * (head_dim // 4)`` pass unrotated).
        max_freq: ratio between the highest and the lowest frequency.
    """

    def __init__(self, head_dim: int, max_freq: float = 64.0) -> None:
        super().__init__()
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
            raise CanvasTypeError(f"SceneRoPE: head_dim must be a positive int, got {head_dim!r}")
        if isinstance(max_freq, bool) or not isinstance(max_freq, (int, float)) or not 0 < max_freq < math.inf:
            raise CanvasTypeError(f"SceneRoPE: max_freq must be a finite number > 0, got {max_freq!r}")
        self.head_dim = int(head_dim)
        self.rot = 4 * (self.head_dim // 4)
        self.max_freq = float(max_freq)

    def _freqs(self, device, dtype: torch.dtype) -> torch.Tensor:
        """The ``rot / 4`` frequencies, computed per call in ``dtype`` (float32 or float64): never
        a buffer, which ``module.half()`` / ``.bfloat16()`` would round for good (it is not in the
        state_dict, so loading weights would not restore it)."""
        n = self.rot // 4
        k = torch.arange(n, device=device, dtype=dtype)
        return (math.pi / 2) * self.max_freq ** (k / max(n - 1, 1))

    @property
    def freqs(self) -> torch.Tensor:
        """The float32 frequencies (read-only view of what :meth:`forward` uses)."""
        return self._freqs(None, torch.float32)

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Rotate ``x (B, H, N, head_dim)`` by ``coords (B|1, N, 2)``; same shape back."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[-1] != self.head_dim:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"SceneRoPE: x must be (B, H, N, {self.head_dim}), got {got}")
        if (not isinstance(coords, torch.Tensor) or coords.dim() != 3 or coords.shape[-1] != 2
                or coords.shape[1] != x.shape[2] or coords.shape[0] not in (1, x.shape[0])):
            got = tuple(coords.shape) if isinstance(coords, torch.Tensor) else type(coords).__name__
            raise ShapeError(f"SceneRoPE: coords must be (B|1, N, 2) = ({x.shape[0]}|1, {x.shape[2]}, 2) "
                             f"for x {tuple(x.shape)}, got {got}")
        if self.rot == 0:
            return x
        adt = coord_dtype(x, coords)
        ang = coords.to(adt)[..., :, None, :] * self._freqs(coords.device, adt)[:, None]   # (B, N, n, 2)
        ang = ang.transpose(-1, -2).reshape(*coords.shape[:-1], self.rot // 2)   # [y freqs, x freqs]
        cos, sin = ang.cos()[:, None].to(x.dtype), ang.sin()[:, None].to(x.dtype)  # (B, 1, N, r/2)
        half = self.rot // 2
        x1, x2, rest = x[..., :half], x[..., half:self.rot], x[..., self.rot:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], dim=-1)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, rotated={self.rot}, max_freq={self.max_freq}"
