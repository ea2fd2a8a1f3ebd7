"""A procedural video-and-action task: a Gaussian blob moving at a constant velocity.

Each sample is a latent video ``(F, C, H, W)``: channel 0 holds a Gaussian blob whose centre
moves by ``(vy, vx)`` latent pixels per frame, the other channels hold fixed-seed texture noise.
The action to predict is the velocity ``(vy, vx)`` (what an agent must output to follow the
blob); the reward is the fraction of frames whose blob centre stays inside the frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

__all__ = ["BlobTask", "BlobBatch"]


@dataclass
class BlobBatch:
    """``video (B, F, C, H, W)``, ``action (B, 2)`` velocity, ``reward (B, 1)``, ``start (B, 2)``."""

    video: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    start: torch.Tensor


class BlobTask:
    """Generator of :class:`BlobBatch` es (deterministic per ``seed``).

    Args:
        frames, channels, height, width: latent video shape per sample.
        max_speed: largest velocity component, in latent pixels per frame.
        sigma: blob width in latent pixels.
        noise: amplitude of the texture noise in the other channels.
    """

    def __init__(self, frames: int = 4, channels: int = 4, height: int = 8, width: int = 8,
                 max_speed: float = 1.0, sigma: float = 1.2, noise: float = 0.1) -> None:
        self.shape: Tuple[int, int, int, int] = (frames, channels, height, width)
        self.max_speed, self.sigma, self.noise = float(max_speed), float(sigma), float(noise)

    def centres(self, start: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Blob centres ``(B, F, 2)`` at every frame: ``start + f * velocity``."""
        f = torch.arange(self.shape[0], dtype=start.dtype).view(1, -1, 1)
        return start.unsqueeze(1) + f * action.unsqueeze(1)

    def sample(self, batch_size: int, generator: torch.Generator) -> BlobBatch:
        F, C, H, W = self.shape
        start = torch.rand(batch_size, 2, generator=generator) * torch.tensor([H - 1.0, W - 1.0])
        action = (torch.rand(batch_size, 2, generator=generator) * 2 - 1) * self.max_speed
        centres = self.centres(start, action)  # (B, F, 2)
        yy = torch.arange(H, dtype=torch.float32).view(1, 1, H, 1)
        xx = torch.arange(W, dtype=torch.float32).view(1, 1, 1, W)
        d2 = (yy - centres[..., 0, None, None]) ** 2 + (xx - centres[..., 1, None, None]) ** 2
        blob = torch.exp(-d2 / (2 * self.sigma ** 2))  # (B, F, H, W)
        video = self.noise * torch.randn(batch_size, F, C, H, W, generator=generator)
        video[:, :, 0] += 2.0 * blob
        inside = ((centres >= 0) & (centres <= torch.tensor([H - 1.0, W - 1.0]))).all(-1)
        reward = inside.float().mean(1, keepdim=True)
        return BlobBatch(video=video, action=action, reward=reward, start=start)
