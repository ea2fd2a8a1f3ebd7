"""Minimal ActionHead used only when ``canvas_core.runtime.heads`` is not importable."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from canvas_core.errors import ShapeError


class ActionHead(nn.Module):
    """MLP ``latent_channels -> hidden_dim -> action_dim`` over features averaged over every
    axis but the channel axis. Input ``(B, T, C, *spatial)`` or ``(B, C)``; output
    ``(B, action_dim)``."""

    def __init__(
        self, latent_channels: int = 16, action_dim: int = 7, hidden_dim: Optional[int] = None
    ) -> None:
        super().__init__()
        hidden = hidden_dim or max(1, latent_channels // 2)
        self.latent_channels, self.action_dim = latent_channels, action_dim
        self.net = nn.Sequential(
            nn.Linear(latent_channels, hidden), nn.GELU(), nn.Linear(hidden, action_dim)
        )

    def forward(self, noise_pred: torch.Tensor) -> torch.Tensor:
        x = noise_pred
        if x.dim() >= 3:
            if x.shape[2] != self.latent_channels:
                raise ShapeError(
                    f"ActionHead expects (B, T, C={self.latent_channels}, ...), "
                    f"got {tuple(x.shape)}"
                )
            x = x.transpose(1, 2).flatten(2).mean(dim=2)
        elif x.dim() != 2 or x.shape[1] != self.latent_channels:
            raise ShapeError(
                f"ActionHead expects (B, {self.latent_channels}), got {tuple(x.shape)}"
            )
        return self.net(x.to(self.net[0].weight.dtype))
