"""A small recurrent CanViT core: glimpses in, a persistent canvas state updated per glimpse.

Per call (one glimpse): patch-embed the glimpse to local tokens placed at the viewpoint; for each
block: local self-attention (RoPE on viewpoint coordinates) + MLP, ``canvas_read`` (local reads
the canvas, residual) and ``canvas_write`` (canvas reads the local tokens; gated convex update,
or residual).  The state is a fixed-size canvas ``(B, G*G, canvas_dim)`` plus a recurrent CLS
token, so the cost of a step does not depend on how many glimpses came before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from canvas_core.errors import CanvasTypeError, ShapeError
from canvas_core.extend import check_elements
from canvas_plugin_canvit.attention import CanvasReadAttention, CanvasWriteAttention
from canvas_plugin_canvit.rope import SceneRoPE, coord_dtype
from canvas_plugin_canvit.viewpoint import Viewpoint, check_viewpoint_for, grid_coords, viewpoint_coords

__all__ = ["CanvasState", "CanViTOutput", "CanViTCore"]


@dataclass
class CanvasState:
    """Recurrent state of :class:`CanViTCore`.

    Attributes:
        canvas: ``(B, G * G, canvas_dim)`` canvas tokens, row-major over a ``G x G`` scene grid.
        recurrent_cls: ``(B, 1, d_model)`` global token carried across glimpses.
    """

    canvas: torch.Tensor
    recurrent_cls: torch.Tensor

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.canvas.shape[1])

    def detach(self) -> "CanvasState":
        return CanvasState(self.canvas.detach(), self.recurrent_cls.detach())


try:  # pytree node: the state can cross torch.export / torch.compile boundaries
    from torch.utils._pytree import register_dataclass as _register

    _register(CanvasState)
except Exception:  # pragma: no cover - older torch
    pass


class CanViTOutput(NamedTuple):
    """``state``: the updated :class:`CanvasState`; ``local_patches``: ``(B, n_patches, d_model)``."""

    state: CanvasState
    local_patches: torch.Tensor


class _SelfAttention(nn.Module):
    def __init__(self, d: int, n_heads: int, rope_max_freq: float) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d // n_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.rope = SceneRoPE(self.head_dim, rope_max_freq)

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.rope(q, coords), self.rope(k, coords)
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D))


class _Block(nn.Module):
    def __init__(self, d: int, dc: int, n_heads: int, mlp_ratio: float, write_gate: bool,
                 rope_max_freq: float) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3, self.norm4 = (nn.LayerNorm(d) for _ in range(4))
        self.attn = _SelfAttention(d, n_heads, rope_max_freq)
        hidden = int(d * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
        self.read = CanvasReadAttention(d, n_heads, canvas_dim=dc, rope_max_freq=rope_max_freq)
        self.write = CanvasWriteAttention(dc, n_heads, local_dim=d, gate=write_gate,
                                          rope_max_freq=rope_max_freq)
        self.gated = write_gate

    def forward(self, local, canvas, local_xy, canvas_xy):
        local = local + self.attn(self.norm1(local), local_xy)
        local = local + self.mlp(self.norm2(local))
        local = local + self.read(self.norm3(local), canvas, canvas, q_coords=local_xy, k_coords=canvas_xy)
        kv = self.norm4(local)
        w = self.write(canvas, kv, kv, q_coords=canvas_xy, k_coords=local_xy)
        canvas = w if self.gated else canvas + w
        return local, canvas


class CanViTCore(nn.Module):
    """Recurrent canvas vision model (small, trainable from scratch; not the released weights).

    Args:
        d_model: width of the local (glimpse) tokens.
        canvas_dim: width of the canvas tokens (default ``d_model``; may differ).
        n_heads: heads of every attention (``d_model`` and ``canvas_dim`` divisible by it).
        depth: number of blocks (each: self-attention, MLP, canvas read, canvas write).
        patch_size: glimpse patch size in pixels.
        in_chans: glimpse channels.
        mlp_ratio: hidden width of the MLP relative to ``d_model``.
        write_gate: convex gated canvas writes (else residual writes).
        rope_max_freq: see :class:`~canvas_plugin_canvit.rope.SceneRoPE`.

    ``forward(glimpse (B, C, g, g), state, viewpoint) -> CanViTOutput``; ``g`` must be a multiple
    of ``patch_size``; any glimpse size and canvas grid size work with the same weights.  The
    viewpoint lies on the glimpse's device, with batch ``B`` or 1 (one window for every item).
    """

    def __init__(self, d_model: int = 64, canvas_dim: Optional[int] = None, n_heads: int = 4,
                 depth: int = 2, patch_size: int = 8, in_chans: int = 3, mlp_ratio: float = 2.0,
                 write_gate: bool = True, rope_max_freq: float = 64.0) -> None:
        super().__init__()
        dc = d_model if canvas_dim is None else canvas_dim
        for name, v in (("d_model", d_model), ("canvas_dim", dc), ("n_heads", n_heads), ("depth", depth),
                        ("patch_size", patch_size), ("in_chans", in_chans)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise CanvasTypeError(f"CanViTCore: {name} must be a positive int, got {v!r}")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not 0 < mlp_ratio < math.inf \
                or int(d_model * mlp_ratio) < 1:
            raise CanvasTypeError(f"CanViTCore: mlp_ratio must be a finite number > 0 (with d_model * mlp_ratio "
                                  f">= 1), got {mlp_ratio!r}")
        if isinstance(rope_max_freq, bool) or not isinstance(rope_max_freq, (int, float)) \
                or not 0 < rope_max_freq < math.inf:
            raise CanvasTypeError(f"CanViTCore: rope_max_freq must be a finite number > 0, got {rope_max_freq!r}")
        if not isinstance(write_gate, bool):
            raise CanvasTypeError(f"CanViTCore: write_gate must be True or False, got {write_gate!r}")
        if d_model % n_heads or dc % n_heads:
            raise ShapeError(f"CanViTCore: d_model={d_model} and canvas_dim={dc} must be divisible "
                             f"by n_heads={n_heads}")
        self.d_model, self.canvas_dim, self.patch_size, self.in_chans = d_model, dc, patch_size, in_chans
        self.patch_embed = nn.Conv2d(in_chans, d_model, patch_size, stride=patch_size)
        self.canvas_init = nn.Parameter(torch.zeros(dc))
        self.cls_init = nn.Parameter(torch.randn(d_model) * 0.02)
        self.blocks = nn.ModuleList(_Block(d_model, dc, n_heads, mlp_ratio, write_gate, rope_max_freq)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(d_model)

    def init_state(self, batch_size: int, canvas_grid_size: int) -> CanvasState:
        """Fresh state: a ``canvas_grid_size x canvas_grid_size`` canvas of the learned init token."""
        for name, v in (("batch_size", batch_size), ("canvas_grid_size", canvas_grid_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise CanvasTypeError(f"CanViTCore.init_state: {name} must be a positive int, got {v!r}")
        n = canvas_grid_size * canvas_grid_size
        check_elements((batch_size, n, self.canvas_dim), "CanViTCore.init_state canvas (B, G * G, canvas_dim)")
        canvas = self.canvas_init.expand(batch_size, n, self.canvas_dim)
        cls = self.cls_init.expand(batch_size, 1, self.d_model)
        return CanvasState(canvas.clone(), cls.clone())

    def get_spatial(self, canvas: torch.Tensor) -> torch.Tensor:
        """Token-wise LayerNorm of the canvas ``(B, G*G, canvas_dim)`` (what linear probes read)."""
        return F.layer_norm(canvas, (self.canvas_dim,))

    def forward(self, glimpse: torch.Tensor, state: CanvasState, viewpoint: Viewpoint) -> CanViTOutput:
        if not isinstance(state, CanvasState):
            raise CanvasTypeError(f"CanViTCore: state must be a CanvasState (init_state()), got {type(state).__name__}")
        if not isinstance(viewpoint, Viewpoint):
            raise CanvasTypeError(f"CanViTCore: viewpoint must be a Viewpoint, got {type(viewpoint).__name__}")
        if not isinstance(glimpse, torch.Tensor):
            raise CanvasTypeError(f"CanViTCore: glimpse must be a torch.Tensor, got {type(glimpse).__name__}")
        for name, t in (("state.canvas", state.canvas), ("state.recurrent_cls", state.recurrent_cls)):
            if not isinstance(t, torch.Tensor) or t.dim() != 3:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ShapeError(f"CanViTCore: {name} must be a 3-d tensor (see init_state()), got {got}")
        if state.canvas.shape[-1] != self.canvas_dim or state.recurrent_cls.shape[1:] != (1, self.d_model):
            raise ShapeError(f"CanViTCore: state must hold canvas (B, G*G, {self.canvas_dim}) and recurrent_cls "
                             f"(B, 1, {self.d_model}), got {tuple(state.canvas.shape)} and "
                             f"{tuple(state.recurrent_cls.shape)}; build it with init_state()")
        if state.recurrent_cls.shape[0] != state.canvas.shape[0]:
            raise ShapeError(f"CanViTCore: state.canvas batch {state.canvas.shape[0]} and state.recurrent_cls "
                             f"batch {state.recurrent_cls.shape[0]} differ")
        from canvas_core.extend import check_dtypes_devices

        check_dtypes_devices("CanViTCore", self, glimpse=glimpse, **{"state.canvas": state.canvas,
                                                                  "state.recurrent_cls": state.recurrent_cls})
        if glimpse.dim() != 4 or glimpse.shape[1] != self.in_chans or glimpse.shape[-1] % self.patch_size \
                or glimpse.shape[-2] % self.patch_size or glimpse.shape[-1] != glimpse.shape[-2]:
            raise ShapeError(f"CanViTCore: glimpse must be (B, {self.in_chans}, g, g) with g a multiple of "
                             f"patch_size={self.patch_size} (a square glimpse: sample_at_viewpoint gives one), "
                             f"got {tuple(glimpse.shape)}")
        B = glimpse.shape[0]
        if state.canvas.shape[0] != B:
            raise ShapeError(f"CanViTCore: glimpse batch {B} and state batch {state.canvas.shape[0]} must agree; "
                             f"build the state with init_state({B}, ...)")
        check_viewpoint_for("CanViTCore", viewpoint, glimpse, "the glimpse")
        G = state.grid_size
        if G * G != state.canvas.shape[1]:
            raise ShapeError(f"CanViTCore: the canvas must hold a square grid of tokens, got {state.canvas.shape[1]}")
        patches = self.patch_embed(glimpse)                        # (B, D, h, w)
        h, w = patches.shape[-2:]
        local = patches.flatten(2).transpose(1, 2)                 # (B, h*w, D)
        cdt = coord_dtype(glimpse, viewpoint.centers)
        vp = viewpoint.to(device=glimpse.device, dtype=cdt)  # batch 1 broadcasts through RoPE's (B|1, N, 2)
        local_xy = torch.cat([vp.centers[:, None, :], viewpoint_coords(vp, h, w)], dim=1)  # CLS at the centre
        canvas_xy = grid_coords(G, G, glimpse.device, cdt)[None]
        x = torch.cat([state.recurrent_cls, local], dim=1)
        canvas = state.canvas
        for blk in self.blocks:
            x, canvas = blk(x, canvas, local_xy, canvas_xy)
        x = self.norm(x)
        return CanViTOutput(CanvasState(canvas, x[:, :1]), x[:, 1:])
