"""`FlexKernel`: one softmax group of an execution plan on FlexAttention.

Kernel contract (the core's, see ``canvas_core.extend.ReferenceKernel``)::

    kernel = FlexKernel(group, plan, n_heads=..., head_dim=..., block_size=128, compile=None)
    out = kernel(q, k, v, scale=..., dropout_p=0.0)     # (B, H, N, d) canonical -> same

Per query ``i``: ``softmax_j(scale * q_i . k_j + log w_ij)`` over the keys with ``w_ij > 0``
(``w_ij`` the largest weight of a rectangle of the group covering ``(i, j)``); a query with no
key outputs 0.

How: positions are permuted to the plan's packed (region-major) order, where the group's
weights are a small *segment grid* (constant on each cell).  The ``BlockMask`` is built from the
plan's tile structure (``block_layout_of``): empty tiles are skipped, *full* tiles (every pair
linked with one weight) skip the ``mask_mod``, partial tiles evaluate it.  ``score_mod`` adds
``log w`` looked up through (row segment, column segment), so no ``N x N`` tensor exists.

On CPU FlexAttention is inference only (no backward pass); the kernel refuses inputs that
require grad with a clear error.

``compile``: ``None`` (default) compiles ``flex_attention`` lazily on the first call (the fused
kernel; tens of seconds on CPU the first time); ``False`` runs the eager (unfused, exact)
implementation, which materializes the scores.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Optional

import numpy as np
import torch

from canvas_core.extend import AttentionKernel, ExecutionPlan, RectGroup, block_layout_of, segment_grid
from canvas_core.errors import ShapeError, UnavailableError

__all__ = ["FlexKernel", "kv_block_tensors"]

_COMPILED: Dict[str, Any] = {}


def _flex():
    try:
        from torch.nn.attention import flex_attention as fa
    except ImportError as exc:  # pragma: no cover - guarded by the registry check
        raise UnavailableError(
            f"kernel 'flex' needs torch >= 2.5 (torch.nn.attention.flex_attention): {exc}") from None
    return fa


def kv_block_tensors(state: np.ndarray):
    """``(kv_num, kv_idx, full_num, full_idx)`` int32 tensors shaped ``(1, 1, nqb[, nkb])``.

    ``state`` is a ``canvas_core.extend.BlockLayout`` state matrix
    ``(nqb, nkb)`` (0 empty, 1 partial, 2 full).  The *partial* blocks go to ``kv_*`` (mask_mod
    evaluated), the *full* ones to ``full_kv_*``; each row lists its blocks first, ascending,
    then pads with zeros (never read, the counts bound the loop).
    """

    def pack(sel: np.ndarray):
        num = sel.sum(axis=1).astype(np.int32)
        idx = np.zeros(sel.shape, dtype=np.int32)
        for r in range(sel.shape[0]):
            cols = np.flatnonzero(sel[r])
            idx[r, : cols.size] = cols
        return torch.from_numpy(num)[None, None], torch.from_numpy(idx)[None, None]

    kv_num, kv_idx = pack(state == 1)
    full_num, full_idx = pack(state == 2)
    return kv_num, kv_idx, full_num, full_idx


class FlexKernel(AttentionKernel):
    """FlexAttention over one fn type's rectangles (see the module docstring).

    Args:
        group: the fn type's rectangles (packed coordinates).
        plan: the execution plan (``perm``, ``inv_perm``, ``n``).
        n_heads, head_dim: informational.
        block_size: BlockMask tile edge (FlexAttention's default is 128).
        compile: None / True: ``torch.compile(flex_attention)`` on first call; False: eager.
        device: where to build the buffers (they move with ``.to()``).
    """

    def __init__(self, group: RectGroup, plan: ExecutionPlan, *, n_heads: int = 1,
                 head_dim: Optional[int] = None, block_size: int = 128, compile: Optional[bool] = None,
                 device: Any = None) -> None:
        super().__init__(group, plan, n_heads=n_heads, head_dim=head_dim)
        _flex()
        n = self.n
        self.block_size = bs = int(block_size)
        if bs < 1:
            raise ShapeError(f"FlexKernel block_size must be >= 1, got {block_size!r}")
        self.compile = compile is not False
        sg = segment_grid(n, group.q0, group.q1, group.k0, group.k1, group.weight)
        grid = torch.from_numpy(sg.grid)
        bl = block_layout_of(sg, n, bs)
        self.n_blocks = (bl.n_q_blocks, bl.n_k_blocks)
        self.density = bl.density
        rows = {
            "perm": torch.from_numpy(plan.perm),
            "inv": torch.from_numpy(plan.inv_perm),
            "row_seg": torch.from_numpy(sg.row_segment_of(n)),
            "col_seg": torch.from_numpy(sg.col_segment_of(n)),
            "linked": grid > 0,
            # log w where linked (taken in the grid's float64: 1e-300 keeps its -690.8, not a
            # clamped -69.1); 0 elsewhere (those pairs are masked out anyway)
            "logw": torch.where(grid > 0, grid, torch.ones_like(grid)).log().float(),
            "row_has_key": (grid > 0).any(dim=1)[torch.from_numpy(sg.row_segment_of(n))] if n
            else torch.zeros(0, dtype=torch.bool),
        }
        kv = kv_block_tensors(bl.state)
        for name, t in list(rows.items()) + list(zip(("kv_num", "kv_idx", "full_num", "full_idx"), kv)):
            self.register_buffer(name, t.to(device) if device is not None else t, persistent=False)
        self._block_masks: Dict[str, Any] = {}

    def extra_repr(self) -> str:
        return (f"fn={self.fn!r}, n={self.n}, block_size={self.block_size}, "
                f"tiles={self.n_blocks}, density={self.density:.3f}, compile={self.compile}")

    # --- FlexAttention pieces -----------------------------------------------------------------
    def _mask_mod(self, b, h, q_idx, kv_idx):
        return self.linked[self.row_seg[q_idx], self.col_seg[kv_idx]]

    def _score_mod(self, score, b, h, q_idx, kv_idx):
        return score + self.logw[self.row_seg[q_idx], self.col_seg[kv_idx]].to(score.dtype)

    def block_mask(self):
        """The FlexAttention ``BlockMask`` on the buffers' device (built once per device)."""
        key = str(self.kv_num.device)
        bm = self._block_masks.get(key)
        if bm is None:
            fa = _flex()
            bm = fa.BlockMask.from_kv_blocks(
                self.kv_num, self.kv_idx, self.full_num, self.full_idx, BLOCK_SIZE=self.block_size,
                mask_mod=self._mask_mod, seq_lengths=(self.n, self.n))
            self._block_masks[key] = bm
        return bm

    def _attention(self):
        fa = _flex()
        if not self.compile:
            return fa.flex_attention
        fn = _COMPILED.get("flex")
        if fn is None:
            fn = _COMPILED["flex"] = torch.compile(fa.flex_attention, dynamic=False)
        return fn

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: Optional[float] = None,
                dropout_p: float = 0.0) -> torch.Tensor:
        """``(B, H, N, d)`` x3 canonical -> ``(B, H, N, d)`` canonical."""
        if q.dim() != 4 or q.shape[-2] != self.n or k.shape != q.shape or v.shape[:-1] != q.shape[:-1]:
            raise ShapeError(f"FlexKernel for {self.n} positions expects q, k, v of shape (B, H, {self.n}, d); "
                             f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
        if dropout_p:
            raise UnavailableError(
                f"kernel 'flex' has no attention dropout (dropout_p={dropout_p}); build the attention "
                "with dropout=0.0 or compile with kernel='reference'")
        if q.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            raise UnavailableError(
                "kernel 'flex_cpu' cannot train: FlexAttention has no backward pass on CPU; run under "
                "torch.no_grad() / torch.inference_mode(), on CUDA, or choose kernel='reference' "
                "(compile(kernel=...) or adapter.install_topology(..., kernel=...))")
        if self.n == 0:
            return q.new_zeros(q.shape[:-1] + v.shape[-1:])
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
        # NaN isolation: masked pairs get p = 0, but 0 * (a non-finite value) is NaN in P @ V, so a
        # key holding a non-finite number gets zero values and a NaN key instead: queries linked
        # to it turn NaN (their score is NaN), the others never see it (DESIGN.md semantics)
        bad = ((k * 0).sum(dim=-1, keepdim=True) + (v * 0).sum(dim=-1, keepdim=True)).isnan()  # x*0: NaN iff x is
        k, v = k.masked_fill(bad, float("nan")), v.masked_fill(bad, 0.0)
        qp, kp, vp = (t.index_select(2, self.perm) for t in (q, k, v))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            out = self._attention()(qp, kp, vp, score_mod=self._score_mod, block_mask=self.block_mask(),
                                    scale=scale)
        out = out * self.row_has_key[:, None].to(out.dtype)
        return out.index_select(2, self.inv)
