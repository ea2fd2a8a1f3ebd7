"""Canvas Attention (after CanViT): asymmetric cross-attention between local tokens and a canvas.

Both types follow the canvas-core attention contract
``module(queries (B, Nq, Dq), keys (B, Nk, Dk), values (B, Nk, Dk), key_mask=None) -> (B, Nq, Dq)``
and take optional keyword arguments ``q_coords`` / ``k_coords`` (``(B|1, N, 2)`` scene
coordinates ``(y, x)``, see :mod:`canvas_plugin_canvit.viewpoint`) for the rotary embeddings.

* ``canvas_read`` (:class:`CanvasReadAttention`): the **local** tokens (queries, width
  ``d_model``) read the **canvas** (keys / values, width ``canvas_dim``).  Local side projected
  in (``q_proj``: ``d_model -> canvas_dim``) and out (``out_proj``: ``canvas_dim -> d_model``);
  the canvas keys and values are used **unprojected** (keys through a parameter-free LayerNorm).
* ``canvas_write`` (:class:`CanvasWriteAttention`): the **canvas** tokens (queries, width
  ``d_model``, unprojected, parameter-free LayerNorm) query the **local** tokens (keys / values,
  width ``local_dim``, projected by ``k_proj`` / ``v_proj``: ``local_dim -> d_model``); no output
  projection.  With ``gate=True`` the result is the convex combination
  ``(1 - g) * canvas + g * update`` with a learned per-channel ``g = sigmoid(gate_logit)``.

Coordinates when not passed: the local side uses the module's ``viewpoint`` (set with
:meth:`set_viewpoint`) over its glimpse grid, or the default grid; the canvas side uses the
default grid (``default_coords``: an ``s x s`` grid over the whole scene when ``N = s^2``, else one
row).  A query with no allowed key outputs zeros (canvas_write with a gate: the canvas token is
left unchanged).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from canvas_core.errors import CanvasTypeError, ShapeError
from canvas_core.extend import check_elements, check_size
# the core's key-mask reader, kept importable from here under its name (it is in this module's __all__)
from canvas_core.extend import normalize_key_mask
from canvas_plugin_canvit.rope import SceneRoPE, coord_dtype
from canvas_plugin_canvit.viewpoint import (Viewpoint, check_viewpoint_for, default_coords, square_side,
                                            viewpoint_coords)

__all__ = ["CanvasReadAttention", "CanvasWriteAttention", "normalize_key_mask"]


def _pos_int(owner: str, name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise CanvasTypeError(f"{owner}: {name} must be a positive int, got {v!r}")
    return v


def _finite(owner: str, name: str, v) -> float:
    """A real, finite number (NaN or inf would reach every output)."""
    try:  # float() of an int past float's range raises OverflowError
        f = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise CanvasTypeError(f"{owner}: {name} must be a finite number, got {v!r}")
    return f


def _width(owner: str, name: str, v) -> int:
    """A positive int within the width limit (``CANVAS_MAX_WIDTH``): it sizes a weight."""
    check_size("width", _pos_int(owner, name, v), f"attention type {owner!r} {name}")
    return v


#: accepted values of ``kernel=`` (the canvas types compute their attention themselves)
KERNELS = ("auto", "reference")


def _check_kernel(owner: str, kernel) -> str:
    if kernel not in KERNELS:
        raise CanvasTypeError(f"{owner}: unknown kernel {kernel!r}; the canvas attention types run their own "
                              f"attention, use kernel='auto' or 'reference' (one of {list(KERNELS)})")
    return kernel


def _attend(q, k, v, allowed, bias, dropout_p: float, training: bool):
    """Safe masked softmax attention on ``(B, H, N, d)``; returns ``(out, has_key (B|1, 1, Nq, 1))``."""
    logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias[:, None].to(logits.dtype)
    has_key = None
    if allowed is not None:
        a = allowed[:, None]
        logits = logits.masked_fill(~a, float("-inf"))
        has_key = a.any(dim=-1, keepdim=True)
        logits = logits.masked_fill(~has_key, 0.0)
    low = logits.dtype in (torch.float16, torch.bfloat16)  # upcast those; float64 stays float64
    w = torch.softmax(logits.float() if low else logits, dim=-1).to(v.dtype)
    if has_key is not None:
        w = w * has_key.to(w.dtype)
    if dropout_p > 0.0 and training:
        w = F.dropout(w, p=dropout_p, training=True)
    out = torch.matmul(w, v)
    if k.shape[-2] == 0:  # no keys at all: exactly zero
        out = torch.zeros_like(out)
        has_key = torch.zeros(1, 1, q.shape[-2], 1, dtype=torch.bool, device=q.device)
    return out, has_key


class _CanvasAttentionBase(nn.Module):
    type_name = "canvas_attention"

    def __init__(self, d_model: int, n_heads: int, dropout: float, attn_dim: int,
                 rope: bool, rope_max_freq: float, kernel: str = "auto") -> None:
        super().__init__()
        t = self.type_name
        self.kernel = _check_kernel(t, kernel)
        if not isinstance(rope, bool):
            raise CanvasTypeError(f"{t}: rope must be True or False, got {rope!r}")
        _width(t, "d_model", d_model)
        _pos_int(t, "n_heads", n_heads)
        if attn_dim % n_heads:
            raise ShapeError(f"{t}: attention width {attn_dim} is not divisible by n_heads={n_heads}; "
                             f"choose n_heads among the divisors of {attn_dim}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
            raise CanvasTypeError(f"{t}: dropout must be a float in [0, 1], got {dropout!r}")
        self.d_model, self.n_heads = d_model, n_heads
        self.attn_dim, self.head_dim = attn_dim, attn_dim // n_heads
        self.dropout_p = float(dropout)
        self.rope = SceneRoPE(self.head_dim, rope_max_freq) if rope else None
        self.viewpoint: Optional[Viewpoint] = None
        self.local_grid: Optional[Tuple[int, int]] = None

    def set_viewpoint(self, viewpoint: Optional[Viewpoint], local_grid: Optional[Tuple[int, int]] = None) -> None:
        """Place the local tokens (an ``h x w`` glimpse grid, default square) at ``viewpoint``."""
        if viewpoint is not None and not isinstance(viewpoint, Viewpoint):
            raise CanvasTypeError(f"{self.type_name}.set_viewpoint: expected a Viewpoint, "
                                  f"got {type(viewpoint).__name__}")
        if local_grid is not None and (
                not isinstance(local_grid, (tuple, list)) or len(local_grid) != 2
                or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in local_grid)):
            raise CanvasTypeError(f"{self.type_name}.set_viewpoint: local_grid must be (h, w) positive ints "
                                  f"or None, got {local_grid!r}")
        local_grid = None if local_grid is None else (int(local_grid[0]), int(local_grid[1]))
        self.viewpoint, self.local_grid = viewpoint, local_grid

    def _local_coords(self, n: int, like: torch.Tensor) -> torch.Tensor:
        vp = self.viewpoint
        if vp is not None:
            check_viewpoint_for(f"{self.type_name} (viewpoint from set_viewpoint())", vp, like, "the local tokens")
            grid = self.local_grid
            if grid is None or grid[0] * grid[1] != n:
                s = square_side(n)
                grid = (s, s) if s is not None else (1, n)
            return viewpoint_coords(vp.to(device=like.device, dtype=coord_dtype(like, vp.centers)), *grid)
        return default_coords(n, like.device, coord_dtype(like), self.local_grid)[None]

    @staticmethod
    def _canvas_coords(n: int, like: torch.Tensor) -> torch.Tensor:
        return default_coords(n, like.device, coord_dtype(like))[None]

    def _check_coords(self, name: str, c: Optional[torch.Tensor], B: int, n: int, like: torch.Tensor) -> None:
        if c is None:
            return
        if not isinstance(c, torch.Tensor) or c.dim() != 3 or c.shape[-1] != 2 or c.shape[1] != n \
                or c.shape[0] not in (1, B):
            got = tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__
            raise ShapeError(f"{self.type_name}: {name} must be (B|1, {n}, 2) scene coordinates (y, x), got {got}")
        if c.device != like.device:
            raise ShapeError(f"{self.type_name}: {name} is on {c.device} but the queries are on {like.device}; "
                             f"move it with {name}.to({str(like.device)!r})")

    def _check(self, queries, keys, values, dq: int, dk: int) -> None:
        t = self.type_name
        for name, x, d in (("queries", queries, dq), ("keys", keys, dk), ("values", values, dk)):
            if not isinstance(x, torch.Tensor):
                raise CanvasTypeError(f"{t}: {name} must be a torch.Tensor, got {type(x).__name__}")
            if x.dim() != 3 or x.shape[-1] != d:
                raise ShapeError(f"{t}: {name} must have shape (B, N, {d}), got {tuple(x.shape)}")
        if keys.shape[:2] != values.shape[:2] or keys.shape[0] != queries.shape[0]:
            raise ShapeError(f"{t}: queries {tuple(queries.shape)}, keys {tuple(keys.shape)} and values "
                             f"{tuple(values.shape)} must share B (and keys / values share Nk)")
        from canvas_core.extend import check_dtypes_devices

        check_dtypes_devices(t, self, queries=queries, keys=keys, values=values)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        return x.reshape(B, N, self.n_heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        B, H, N, d = x.shape
        return x.transpose(1, 2).reshape(B, N, H * d)


class CanvasReadAttention(_CanvasAttentionBase):
    """``canvas_read``: local queries ``(B, Nq, d_model)`` read the canvas ``(B, Nc, canvas_dim)``.

    Args:
        d_model: width of the local tokens (queries and output).
        n_heads: heads (``canvas_dim`` must divide by it).
        dropout: dropout on the attention weights (training only).
        canvas_dim: width of the canvas tokens (default ``d_model``).
        rope: apply scene-relative RoPE (local: viewpoint coords, canvas: canvas grid).
        rope_max_freq: see :class:`~canvas_plugin_canvit.rope.SceneRoPE`.
        kernel: accepted for the runtime contract; only ``"auto"`` / ``"reference"`` exist.
    """

    type_name = "canvas_read"

    def __init__(self, d_model: int, n_heads: int = 4, dropout: float = 0.0, *,
                 canvas_dim: Optional[int] = None, rope: bool = True, rope_max_freq: float = 64.0,
                 kernel: str = "auto") -> None:
        canvas_dim = d_model if canvas_dim is None else canvas_dim
        _width(self.type_name, "canvas_dim", canvas_dim)
        super().__init__(d_model, n_heads, dropout, canvas_dim, rope, rope_max_freq, kernel)
        check_elements((d_model, canvas_dim), f"attention type {self.type_name!r} q_proj weight")
        self.canvas_dim = canvas_dim
        self.q_proj = nn.Linear(d_model, canvas_dim)
        self.out_proj = nn.Linear(canvas_dim, d_model)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                key_mask: Optional[torch.Tensor] = None, *, q_coords: Optional[torch.Tensor] = None,
                k_coords: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, Nq, d_model), (B, Nc, canvas_dim) x2 -> (B, Nq, d_model)``."""
        self._check(queries, keys, values, self.d_model, self.canvas_dim)
        B, Nq, _ = queries.shape
        Nk = keys.shape[1]
        self._check_coords("q_coords", q_coords, B, Nq, queries)
        self._check_coords("k_coords", k_coords, B, Nk, queries)
        allowed, bias = normalize_key_mask(self.type_name, key_mask, B, Nq, Nk, queries)
        q = self._split(self.q_proj(queries))
        k = self._split(F.layer_norm(keys, (self.canvas_dim,)))
        v = self._split(values)
        if self.rope is not None:
            q = self.rope(q, self._local_coords(Nq, queries) if q_coords is None else q_coords)
            k = self.rope(k, self._canvas_coords(Nk, keys) if k_coords is None else k_coords)
        o, has_key = _attend(q, k, v, allowed, bias, self.dropout_p, self.training)
        out = self.out_proj(self._merge(o))
        if has_key is not None:  # the output bias must not leak into rows without any key
            out = out * has_key[:, 0].to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, canvas_dim={self.canvas_dim}, n_heads={self.n_heads}, "
                f"rope={self.rope is not None}")


class CanvasWriteAttention(_CanvasAttentionBase):
    """``canvas_write``: canvas queries ``(B, Nc, d_model)`` read local tokens ``(B, Nl, local_dim)``.

    Args:
        d_model: width of the canvas tokens (queries and output).
        n_heads: heads (``d_model`` must divide by it).
        dropout: dropout on the attention weights (training only).
        local_dim: width of the local tokens (default ``d_model``).
        gate: return ``(1 - g) * canvas + g * update`` (learned per-channel ``g``) instead of the update.
        gate_init: initial gate logit (``sigmoid(-2) ~ 0.12``: small writes at first).
        rope: apply scene-relative RoPE (canvas: canvas grid, local: viewpoint coords).
        rope_max_freq: see :class:`~canvas_plugin_canvit.rope.SceneRoPE`.
        kernel: accepted for the runtime contract; only ``"auto"`` / ``"reference"`` exist.
    """

    type_name = "canvas_write"

    def __init__(self, d_model: int, n_heads: int = 4, dropout: float = 0.0, *,
                 local_dim: Optional[int] = None, gate: bool = False, gate_init: float = -2.0,
                 rope: bool = True, rope_max_freq: float = 64.0, kernel: str = "auto") -> None:
        local_dim = d_model if local_dim is None else local_dim
        _width(self.type_name, "local_dim", local_dim)
        if not isinstance(gate, bool):
            raise CanvasTypeError(f"attention type {self.type_name!r}: gate must be a bool (True = gated convex "
                                  f"canvas update), got {gate!r}; pass gate=True or gate=False")
        gate_init = _finite(self.type_name, "gate_init", gate_init)
        super().__init__(d_model, n_heads, dropout, d_model, rope, rope_max_freq, kernel)
        check_elements((d_model, local_dim), f"attention type {self.type_name!r} k_proj / v_proj weight")
        self.local_dim = local_dim
        self.k_proj = nn.Linear(local_dim, d_model)
        self.v_proj = nn.Linear(local_dim, d_model)
        self.gate_logit = nn.Parameter(torch.full((d_model,), float(gate_init))) if gate else None

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                key_mask: Optional[torch.Tensor] = None, *, q_coords: Optional[torch.Tensor] = None,
                k_coords: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, Nc, d_model), (B, Nl, local_dim) x2 -> (B, Nc, d_model)``."""
        self._check(queries, keys, values, self.d_model, self.local_dim)
        B, Nq, _ = queries.shape
        Nk = keys.shape[1]
        self._check_coords("q_coords", q_coords, B, Nq, queries)
        self._check_coords("k_coords", k_coords, B, Nk, queries)
        allowed, bias = normalize_key_mask(self.type_name, key_mask, B, Nq, Nk, queries)
        q = self._split(F.layer_norm(queries, (self.d_model,)))
        k = self._split(self.k_proj(keys))
        v = self._split(self.v_proj(values))
        if self.rope is not None:
            q = self.rope(q, self._canvas_coords(Nq, queries) if q_coords is None else q_coords)
            k = self.rope(k, self._local_coords(Nk, keys) if k_coords is None else k_coords)
        o, has_key = _attend(q, k, v, allowed, bias, self.dropout_p, self.training)
        upd = self._merge(o)
        if self.gate_logit is None:
            return upd
        g = torch.sigmoid(self.gate_logit).to(upd.dtype)
        out = (1 - g) * queries + g * upd
        if has_key is not None:
            out = torch.where(has_key[:, 0], out, queries)
        return out

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, local_dim={self.local_dim}, n_heads={self.n_heads}, "
                f"gate={self.gate_logit is not None}, rope={self.rope is not None}")
