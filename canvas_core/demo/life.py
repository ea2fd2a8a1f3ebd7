"""A world-model task where iteration should matter: Conway's Game of Life on a small torus, laid
on the tiny CogVideoX's token grid.

A board ``(B, S, S)`` of 0/1 cells is one latent frame ``(B, 1, C, 2S, 2S)``: every cell fills its
own 2 x 2 patch (the backbone's ``patch_size``) in every channel with ``+1`` (alive) or ``-1``
(dead), so one cell is exactly one video token. The backbone learns ONE step of the dynamics (its
output frame is the next board in the same encoding); predicting ``k`` steps ahead then needs ``k``
applications of that step map. :func:`decode` reads a board back (mean of the cell's patch > 0).

Boards are drawn at a random density and kept only when they still change between steps
``k_max - 1`` and ``k_max``, so that neither "everything dies" nor "nothing moves" answers the
k-step question.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import nn

__all__ = ["COGVIDEOX_LIFE", "LifeTask", "LifeBatch", "life_step", "encode", "decode", "cell_logits",
           "build_life_backbone", "life_inputs", "one_step", "rollout", "snap", "LifeHead",
           "LifeReentry"]

#: the demo's tiny CogVideoX (2 blocks, 2 heads x 16) on a 16 x 16 latent frame: an 8 x 8 token grid
COGVIDEOX_LIFE = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                      time_embed_dim=16, text_embed_dim=16, num_layers=2, sample_width=16, sample_height=16,
                      sample_frames=1, patch_size=2, max_text_seq_length=4)


def life_step(board: torch.Tensor) -> torch.Tensor:
    """One Game of Life step on the torus: ``(B, S, S)`` 0/1 -> ``(B, S, S)`` 0/1 (B3/S23)."""
    b = board.float()
    n = sum(torch.roll(b, (dy, dx), (1, 2)) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
    return ((n == 3) | ((b > 0) & (n == 2))).to(board.dtype)


def encode(board: torch.Tensor, channels: int = 4, patch: int = 2) -> torch.Tensor:
    """Board ``(B, S, S)`` -> latent frame ``(B, 1, C, pS, pS)`` of +-1 patches."""
    x = board.float() * 2 - 1
    x = x.repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    return x.unsqueeze(1).unsqueeze(2).expand(-1, 1, channels, -1, -1).contiguous()


def cell_logits(frame: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """Latent frame ``(B, 1, C, pS, pS)`` -> per-cell value ``(B, S, S)`` (mean of its patch)."""
    B, _, C, H, W = frame.shape
    return frame[:, 0].reshape(B, C, H // patch, patch, W // patch, patch).mean((1, 3, 5))


def decode(frame: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """Latent frame ``(B, 1, C, pS, pS)`` -> board ``(B, S, S)`` (long 0/1; alive where the mean > 0)."""
    return (cell_logits(frame, patch) > 0).long()


@dataclass
class LifeBatch:
    """``boards (B, k_max + 1, S, S)``: the start board and the next ``k_max`` states."""

    boards: torch.Tensor

    def target(self, k: int) -> torch.Tensor:
        return self.boards[:, k]

    @property
    def start(self) -> torch.Tensor:
        return self.boards[:, 0]


class LifeTask:
    """Generator of :class:`LifeBatch` es (deterministic per generator).

    Args:
        size: side of the torus (cells; the token grid is ``size x size``).
        k_max: the farthest step stored with each board.
        density: range of the initial fraction of live cells.
    """

    def __init__(self, size: int = 8, k_max: int = 8, density=(0.25, 0.5)) -> None:
        self.size, self.k_max, self.density = int(size), int(k_max), (float(density[0]), float(density[1]))

    def sample(self, batch_size: int, generator: torch.Generator) -> LifeBatch:
        S, out, have = self.size, [], 0
        while have < batch_size:
            n = 2 * (batch_size - have) + 8
            p = self.density[0] + (self.density[1] - self.density[0]) * torch.rand(n, 1, 1, generator=generator)
            b = (torch.rand(n, S, S, generator=generator) < p).long()
            states = [b]
            for _ in range(self.k_max):
                states.append(life_step(states[-1]))
            seq = torch.stack(states, 1)  # (n, k_max + 1, S, S)
            keep = (seq[:, -1] != seq[:, -2]).flatten(1).any(1)
            out.append(seq[keep])
            have += int(keep.sum())
        return LifeBatch(torch.cat(out)[:batch_size])


def build_life_backbone(seed: int = 0) -> nn.Module:
    """The tiny CogVideoX of :data:`COGVIDEOX_LIFE` with random weights (seeded)."""
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(**COGVIDEOX_LIFE)


def life_inputs(model: nn.Module, frame: torch.Tensor, prompt: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Forward kwargs for a latent frame ``(B, 1, C, H, W)``: the prompt (``prompt`` or the model's
    ``demo_prompt``; ``(L, D_text)``), timestep 0."""
    B = frame.shape[0]
    prompt = getattr(model, "demo_prompt", None) if prompt is None else prompt
    if prompt is None:
        cfg = model.config
        prompt = torch.zeros(cfg["max_text_seq_length"], cfg["text_embed_dim"])
    return dict(hidden_states=frame, encoder_hidden_states=prompt.to(frame).unsqueeze(0).expand(B, -1, -1),
                timestep=torch.zeros(B, dtype=torch.long, device=frame.device))


def one_step(model: nn.Module, frame: torch.Tensor, prompt: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The backbone's predicted next frame ``(B, 1, C, H, W)``."""
    return model(**life_inputs(model, frame, prompt)).sample


@torch.no_grad()
def rollout(model: nn.Module, board: torch.Tensor, k: int, hard: bool = True) -> torch.Tensor:
    """Apply the one-step model ``k`` times; ``hard``: decode to 0/1 and re-encode between steps
    (the explicit rollout), else feed the raw output frame back. Returns the final frame ``(B, 1, C, H, W)``."""
    C = int(model.config["in_channels"])
    frame = encode(board, C)
    for _ in range(k):
        frame = one_step(model, frame)
        if hard:
            frame = encode(decode(frame), C)
    return frame


def snap(frame: torch.Tensor, sharpness: float = 4.0, patch: int = 2) -> torch.Tensor:
    """Decode-and-re-encode a latent frame ``(B, 1, C, pS, pS)`` with a straight-through gradient.

    Forward: exactly ``encode(decode(frame))`` (every cell's patch becomes +-1 by the sign of its
    mean), so ``scope="model"`` loops re-entering through it start as the explicit rollout.
    Backward: the gradient of ``tanh(sharpness * mean of the patch)``, so the loop stays trainable.
    """
    B, _, C, H, W = frame.shape
    v = cell_logits(frame, patch)
    soft = torch.tanh(sharpness * v)
    hard = torch.where(v > 0, 1.0, -1.0).to(soft.dtype)
    cells = hard + (soft - soft.detach())
    cells = cells.repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    return cells.unsqueeze(1).unsqueeze(2).expand(B, 1, C, H, W).to(frame.dtype)


class LifeReentry(nn.Module):
    """A trainable :func:`snap` for ``scope="model"`` loops: ``(B, 1, C, pS, pS) -> (B, 1, C, pS, pS)``.

    Each cell is decided by one linear map of its ``C * p * p`` output values (17 parameters,
    shared by every cell and iteration), initialised to ``scale`` times their mean, then re-encoded
    as +-1 with a straight-through gradient (``tanh`` of the value backwards). Before training its
    forward is exactly the explicit rollout's decode and re-encode; training moves the decision
    between steps (a threshold the one-step model was never asked to calibrate)."""

    def __init__(self, channels: int = 4, patch: int = 2, scale: float = 4.0) -> None:
        super().__init__()
        self.read = LifeHead(channels, patch, scale)

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        B, _, C, H, W = frame.shape
        p = self.read.patch
        v = self.read(frame)
        soft = torch.tanh(v)
        cells = torch.where(v > 0, 1.0, -1.0).to(soft.dtype) + (soft - soft.detach())
        cells = cells.repeat_interleave(p, 1).repeat_interleave(p, 2)
        return cells.unsqueeze(1).unsqueeze(2).expand(B, 1, C, H, W).to(frame.dtype)


class LifeHead(nn.Module):
    """The small readout ``(B, 1, C, pS, pS) -> (B, S, S)`` cell logits: one linear map of a cell's
    ``C * p * p`` output values (17 parameters for C = 4, p = 2), initialised to ``scale`` times
    their mean, so that its sign is exactly :func:`decode` before training."""

    def __init__(self, channels: int = 4, patch: int = 2, scale: float = 4.0) -> None:
        super().__init__()
        self.patch = patch
        n = channels * patch * patch
        self.proj = nn.Linear(n, 1)
        with torch.no_grad():
            self.proj.weight.fill_(scale / n)
            self.proj.bias.zero_()

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        B, _, C, H, W = frame.shape
        p = self.patch
        cells = frame[:, 0].reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(B, H // p, W // p, -1)
        return self.proj(cells.float()).squeeze(-1)
