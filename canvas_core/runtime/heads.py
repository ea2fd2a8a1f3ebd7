"""Action decoder heads."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from canvas_core.errors import CanvasTypeError, ShapeError
from canvas_core.schema.limits import check_size

__all__ = ["ActionHead"]


class ActionHead(nn.Module):
    """MLP action decoder.

    ``Linear(latent_channels, hidden) -> GELU -> Linear(hidden, action_dim)``.

    Args:
        latent_channels: input channels ``C`` (e.g. 16 for CogVideoX latents).
        action_dim: output size (e.g. 7 = 6-DoF end effector + gripper).
        hidden_dim: hidden width; default ``max(8, latent_channels // 2)`` (canvas-engineering's,
            so its checkpoints load).
    """

    def __init__(
        self, latent_channels: int = 16, action_dim: int = 7, hidden_dim: Optional[int] = None
    ) -> None:
        super().__init__()
        for label, v in (
            ("latent_channels", latent_channels),
            ("action_dim", action_dim),
            ("hidden_dim", 1 if hidden_dim is None else hidden_dim),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise CanvasTypeError(f"ActionHead: {label} must be an int >= 1, got {v!r}")
            check_size("width", v, f"ActionHead {label}")
        if hidden_dim is None:
            hidden_dim = max(8, latent_channels // 2)
        self.latent_channels, self.action_dim, self.hidden_dim = (
            latent_channels,
            action_dim,
            hidden_dim,
        )
        self.net = nn.Sequential(
            nn.Linear(latent_channels, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, action_dim)
        )

    def forward(self, noise_pred: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` or ``(B, T, C, *spatial)`` (any number of spatial dims, also none) ->
        ``(B, action_dim)``; time and space are mean-pooled first."""
        x = noise_pred
        if not isinstance(x, torch.Tensor):
            raise CanvasTypeError(f"ActionHead: noise_pred must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ShapeError(f"ActionHead: noise_pred must be a floating tensor, got {x.dtype}; use noise_pred.float()")
        if (
            x.dim() < 2
            or (x.dim() == 2 and x.shape[1] != self.latent_channels)
            or (x.dim() >= 3 and x.shape[2] != self.latent_channels)
        ):
            raise ShapeError(
                f"ActionHead: expected (B, {self.latent_channels}) or "
                f"(B, T, {self.latent_channels}, "
                f"*spatial), got {tuple(x.shape)}"
            )
        if x.device.type == "meta" or x.device != self.net[0].weight.device:
            raise ShapeError(f"ActionHead: noise_pred is on {x.device} but the head is on "
                             f"{self.net[0].weight.device}; move one of them (head.to(noise_pred.device))")
        if x.numel() == 0:
            raise ShapeError(
                f"ActionHead: noise_pred {tuple(x.shape)} is empty; there is nothing to pool "
                "(pass at least one batch element, frame and spatial position)"
            )
        if x.dim() >= 3:
            x = x.movedim(2, -1).reshape(x.shape[0], -1, self.latent_channels).mean(dim=1)
        return self.net(x.to(self.net[0].weight.dtype))
