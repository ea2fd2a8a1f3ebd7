"""Viewpoints and glimpses in scene-relative coordinates.

Scene coordinates are ``(y, x)`` in ``[-1, 1]^2`` (``(-1, -1)`` the top-left corner of the scene,
``(1, 1)`` the bottom-right).  A :class:`Viewpoint` is a square window of the scene: its
``centers (B, 2)`` and ``scales (B,)`` (side of the window as a fraction of the scene side: 1 =
the whole scene, 0.5 = a quarter of its area).  A token of a ``h x w`` glimpse grid sits at
``center + scale * cell_center`` where ``cell_center`` is the centre of its cell in the
``[-1, 1]^2`` grid of the glimpse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from canvas_core.errors import CanvasTypeError, ShapeError
from canvas_core.extend import check_elements, isqrt

__all__ = ["Viewpoint", "grid_coords", "default_coords", "viewpoint_coords", "sample_at_viewpoint",
           "check_viewpoint_for"]


def _concrete(*ts: torch.Tensor) -> bool:
    """True for plain CPU tensors holding real values (not traced by torch.compile / export, not
    meta): their values can be checked without a device sync, which every forward would pay on a
    GPU (``CanViTCore`` builds a Viewpoint per call)."""
    if torch.compiler.is_compiling():
        return False
    return all(type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu"
               and not torch._C._functorch.is_functorch_wrapped_tensor(t) for t in ts)


def _bad(t: torch.Tensor, rows: torch.Tensor) -> str:
    """The first offending batch items of ``t`` (``rows`` a ``(B,)`` bool), for messages."""
    return ", ".join(f"item {i} = {t[i].tolist()}" for i in rows.nonzero()[:, 0][:3].tolist())


@dataclass
class Viewpoint:
    """A square window of the scene per batch item.

    Attributes:
        centers: ``(B, 2)`` window centres ``(y, x)`` in scene coordinates ``[-1, 1]``.
        scales: ``(B,)`` window side as a fraction of the scene side (``1`` = full scene).
    """

    centers: torch.Tensor
    scales: torch.Tensor

    def __post_init__(self) -> None:
        c, s = self.centers, self.scales
        if not isinstance(c, torch.Tensor) or not isinstance(s, torch.Tensor):
            raise CanvasTypeError("Viewpoint(centers, scales): both must be torch.Tensors, got "
                                  f"{type(c).__name__} and {type(s).__name__}")
        if c.dim() != 2 or c.shape[-1] != 2 or s.dim() != 1 or s.shape[0] != c.shape[0]:
            raise ShapeError(f"Viewpoint: centers must be (B, 2) and scales (B,), got "
                             f"{tuple(c.shape)} and {tuple(s.shape)}")
        if not c.is_floating_point() or not s.is_floating_point():
            raise ShapeError(f"Viewpoint: centers and scales must be floating tensors, got {c.dtype} and "
                             f"{s.dtype}; use .float()")
        if c.device != s.device:
            raise ShapeError(f"Viewpoint: centers ({c.device}) and scales ({s.device}) must be on one device")
        if _concrete(c, s):
            if not bool(torch.isfinite(c).all()):
                raise ShapeError(f"Viewpoint: centers must be finite (y, x) scene coordinates, "
                                 f"got {_bad(c, ~torch.isfinite(c).all(dim=-1))}; "
                                 f"replace the NaN / inf centres, e.g. with torch.nan_to_num(centers)")
            if not bool(((s > 0) & torch.isfinite(s)).all()):
                bad = ~((s > 0) & torch.isfinite(s))
                raise ShapeError(f"Viewpoint: scales must be finite and > 0 (the window side as a fraction of the "
                                 f"scene side, 1 = full scene), got {_bad(s, bad)}; pass positive scales, "
                                 f"e.g. scales.clamp_min(1e-3)")

    @classmethod
    def full_scene(cls, batch_size: int, device: Optional[torch.device] = None,
                   dtype: torch.dtype = torch.float32) -> "Viewpoint":
        """The whole scene: centres 0, scales 1."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
            raise CanvasTypeError(f"Viewpoint.full_scene: batch_size must be an int >= 0, got {batch_size!r}")
        return cls(torch.zeros(batch_size, 2, device=device, dtype=dtype),
                   torch.ones(batch_size, device=device, dtype=dtype))

    @property
    def batch_size(self) -> int:
        return self.centers.shape[0]

    def to(self, *args, **kwargs) -> "Viewpoint":
        return Viewpoint(self.centers.to(*args, **kwargs), self.scales.to(*args, **kwargs))

    def shifted(self, delta: torch.Tensor) -> "Viewpoint":
        """The same window moved by ``delta`` (``(2,)`` or ``(B, 2)``, ``(y, x)``)."""
        delta = torch.as_tensor(delta, dtype=self.centers.dtype, device=self.centers.device) \
            if not isinstance(delta, torch.Tensor) else delta
        if delta.device != self.centers.device:
            raise ShapeError(f"Viewpoint.shifted: delta is on {delta.device} but the viewpoint is on "
                             f"{self.centers.device}; move it with delta.to({str(self.centers.device)!r})")
        if delta.shape not in ((2,), (1, 2), (self.batch_size, 2)):
            raise ShapeError(f"Viewpoint.shifted: delta must be (2,) or (B, 2) = ({self.batch_size}, 2) as (y, x), "
                             f"got {tuple(delta.shape)}")
        return Viewpoint(self.centers + delta, self.scales)


try:  # pytree node: Viewpoint can be an input of torch.export / torch.compile graphs
    from torch.utils._pytree import register_dataclass as _register

    _register(Viewpoint)
except Exception:  # pragma: no cover - older torch
    pass


def check_viewpoint_for(owner: str, viewpoint: Viewpoint, like: torch.Tensor, what: str) -> None:
    """Refuse a ``viewpoint`` that does not fit the tensor ``like`` (named ``what`` in messages):
    it must hold one window per batch item, or a single window that every item shares, and be
    on a device it can be copied from to ``like``'s (callers move it there, as they always did:
    ``Viewpoint.full_scene(B)`` is made on the CPU; a ``meta`` viewpoint holds no values to copy)."""
    dev = viewpoint.centers.device
    if dev.type == "meta" != like.device.type:  # a meta viewpoint holds no values to copy
        raise ShapeError(f"{owner}: the viewpoint is on {dev}, {what} on {like.device}; move the "
                         f"viewpoint with viewpoint.to({str(like.device)!r})")
    B = like.shape[0]
    if viewpoint.batch_size not in (1, B):
        raise ShapeError(f"{owner}: the viewpoint has batch size {viewpoint.batch_size} but {what} has batch "
                         f"size {B}; pass a viewpoint of batch {B}, or of batch 1 to share one window")


def grid_coords(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Cell centres of an ``h x w`` grid over ``[-1, 1]^2``, row-major: ``(h * w, 2)`` as ``(y, x)``."""
    ys = (torch.arange(h, device=device, dtype=dtype) * 2 + 1) / h - 1
    xs = (torch.arange(w, device=device, dtype=dtype) * 2 + 1) / w - 1
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(h * w, 2)


def square_side(n: int) -> Optional[int]:
    s = isqrt(n)  # math.isqrt that torch.compile traces over symbolic sizes
    return s if s * s == n else None


def default_coords(n: int, device=None, dtype=torch.float32, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Default positions of ``n`` tokens covering the whole scene, ``(n, 2)``.

    ``grid=(h, w)`` with ``h * w == n`` lays them out row-major on that grid; otherwise a perfect
    square ``n = s * s`` is an ``s x s`` grid and any other ``n`` is one row (``y = 0``).
    """
    if grid is not None and grid[0] * grid[1] == n:
        return grid_coords(grid[0], grid[1], device, dtype)
    s = square_side(n)
    if s is not None:
        return grid_coords(s, s, device, dtype)
    return grid_coords(1, n, device, dtype)


def viewpoint_coords(viewpoint: Viewpoint, h: int, w: int) -> torch.Tensor:
    """Scene coordinates ``(B, h * w, 2)`` of an ``h x w`` glimpse grid taken at ``viewpoint``."""
    g = grid_coords(h, w, viewpoint.centers.device, viewpoint.centers.dtype)
    return viewpoint.centers[:, None, :] + viewpoint.scales[:, None, None] * g[None]


def sample_at_viewpoint(spatial: torch.Tensor, viewpoint: Viewpoint, glimpse_size_px: int,
                        mode: str = "bilinear") -> torch.Tensor:
    """Crop-and-resize the window of ``viewpoint`` out of ``spatial (B, C, H, W)``.

    Returns ``(B, C, glimpse_size_px, glimpse_size_px)`` sampled with ``grid_sample``
    (``align_corners=False``, zeros outside the scene).  The viewpoint has batch ``B`` or 1 (one
    window for every item) and is moved to ``spatial``'s device.
    """
    if not isinstance(spatial, torch.Tensor) or spatial.dim() != 4:
        got = tuple(spatial.shape) if isinstance(spatial, torch.Tensor) else type(spatial).__name__
        raise ShapeError(f"sample_at_viewpoint: spatial must be (B, C, H, W), got {got}")
    if not isinstance(viewpoint, Viewpoint):
        raise CanvasTypeError(f"sample_at_viewpoint: viewpoint must be a Viewpoint, got {type(viewpoint).__name__}")
    check_viewpoint_for("sample_at_viewpoint", viewpoint, spatial, "spatial")
    if isinstance(glimpse_size_px, bool) or not isinstance(glimpse_size_px, int) or glimpse_size_px < 1:
        raise CanvasTypeError(f"sample_at_viewpoint: glimpse_size_px must be a positive int, got {glimpse_size_px!r}")
    if not spatial.is_floating_point():
        raise ShapeError(f"sample_at_viewpoint: spatial must be a floating tensor (grid_sample interpolates it), "
                         f"got {spatial.dtype}; convert the image with spatial.float()")
    g = glimpse_size_px
    if not torch.compiler.is_compiling():  # int() of a traced size would pin it in the graph
        check_elements((spatial.shape[0], spatial.shape[1], g, g), "sample_at_viewpoint glimpse (B, C, g, g)",
                       spatial.element_size())
    coords = viewpoint_coords(viewpoint.to(device=spatial.device, dtype=spatial.dtype), g, g).view(-1, g, g, 2)
    coords = coords.expand(spatial.shape[0], -1, -1, -1)  # a batch-1 viewpoint: one window for all
    return F.grid_sample(spatial, coords.flip(-1), mode=mode, padding_mode="zeros", align_corners=False)
