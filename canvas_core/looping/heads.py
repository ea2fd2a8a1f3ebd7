"""Action heads for backbones whose output puts the channel axis first (Mochi)."""

from __future__ import annotations

import torch

from canvas_core.errors import CanvasTypeError, ShapeError

from canvas_core.runtime.heads import ActionHead

__all__ = ["ChannelFirstActionHead"]


class ChannelFirstActionHead(ActionHead):
    """``ActionHead`` reading ``(B, C, T, *spatial)`` (e.g. Mochi's ``sample``) or ``(B, C)``.

    Same parameters and state-dict keys as ``ActionHead``; only the channel axis of its input
    differs (axis 1 instead of 2), so ``head(model(**inputs).sample)`` pools time and space.
    Output ``(B, action_dim)``.
    """

    def forward(self, noise_pred: torch.Tensor) -> torch.Tensor:
        x = noise_pred
        if not isinstance(x, torch.Tensor):
            raise CanvasTypeError(
                f"ActionHead: noise_pred must be a torch.Tensor, got {type(x).__name__}"
            )
        if x.dim() >= 3:
            if x.shape[1] != self.latent_channels:
                raise ShapeError(
                    f"ActionHead: expected the model's output (B, C={self.latent_channels}, T, "
                    f"*spatial) (channels first, as Mochi returns it) or (B, {self.latent_channels}), "
                    f"got {tuple(x.shape)}"
                )
            x = x.movedim(1, 2)
        return super().forward(x)
