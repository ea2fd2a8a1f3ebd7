"""A small canvas world model, trained briefly, then rolled out frame by frame with a cache.

The canvas (T=8 frames of a 6 x 8 grid) holds a 5 x 8 camera region, a proprioception and an
action row, and a slower ``plan`` region (period 2: one frame for every two camera frames).
Every connection reads the same or an earlier frame, so ``canvas_core.incremental`` can roll the
model forward one frame at a time::

    python examples/rollout_world_model.py            # ~200 training steps, then a rollout
    python examples/rollout_world_model.py --steps 20 --check

The task is synthetic: the camera sees a drifting sinusoid whose drift the action sets, and the
model predicts the next frame's camera tokens.  After training, the first ``--context`` frames are
real, the rest are the model's own predictions written back into the canvas.  ``--check``
compares every rollout step with the full forward of the same canvas.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

import canvas_core
from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection, RegionSpec

T, H, W, D, PATCH = 8, 6, 8, 64, 4
CAMERA = 5 * W  # the camera's positions come first in each frame (rows 0-4, canonical order)


def build_layout() -> CanvasLayout:
    return CanvasLayout(T=T, H=H, W=W, d_model=D, regions={
        "camera": (0, T, 0, 5, 0, 8),
        "proprio": (0, T, 5, 6, 0, 2),
        "action": (0, T, 5, 6, 2, 4),
        "plan": RegionSpec((0, T // 2, 5, 6, 4, 8), period=2),
    })


def build_topology() -> CanvasTopology:
    C = Connection
    return CanvasTopology(connections=[
        C(src="camera", dst="camera", t_src=0, t_dst=0),                    # within the frame
        C(src="camera", dst="camera", t_src=0, t_dst=-1, weight=0.5),       # the previous frame
        C(src="camera", dst="action", t_src=0, t_dst=-1, fn="gated"),       # what was done
        C(src="proprio", dst="camera", t_src=0, t_dst=0, fn="pooling"),     # a summary of the view
        C(src="action", dst="proprio", t_src=0, t_dst=0),
        C(src="action", dst="action", t_src=0, t_dst=-1, fn="rwkv"),        # a memory of actions
        C(src="plan", dst="plan", t_src=0, t_dst=-1, fn="linear_attention"),
        C(src="camera", dst="plan", t_src=0, t_dst=0, temporal_fill="hold"),  # the latest plan frame
    ])


class Block(nn.Module):
    """Pre-norm block on ``(B, N, D)``: the canvas layer's change, then an MLP."""

    def __init__(self, layout: CanvasLayout, topology: CanvasTopology) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = CanvasAttention(topology, layout, n_heads=4)
        self.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn.delta(self.norm1(x))  # the change the canvas layer makes
        return x + self.mlp(self.norm2(x))


class WorldModel(nn.Module):
    """Canvas blocks and a read-out head: ``(B, N, D)`` canvas -> ``(B, N, PATCH)`` predictions."""

    def __init__(self, layout: CanvasLayout, depth: int = 2) -> None:
        super().__init__()
        topology = build_topology()
        self.blocks = nn.Sequential(*[Block(layout, topology) for _ in range(depth)])
        self.head = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, PATCH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


class FrameEmbedding(nn.Module):
    """A frame's raw features ``(B, V, PATCH)`` and its index t -> canvas tokens ``(B, V, D)``.
    Runs outside the model, once per frame: it knows the frame index, the model does not need to."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(PATCH, D)
        self.where = nn.Parameter(torch.randn(H * W, D) * 0.02)  # position inside the frame
        self.when = nn.Parameter(torch.randn(T, D) * 0.02)       # frame index

    def forward(self, feats: torch.Tensor, t: int) -> torch.Tensor:
        return self.proj(feats) + self.where + self.when[t]


def episode(batch: int, gen: torch.Generator) -> torch.Tensor:
    """``(B, T, H*W, PATCH)`` raw features: camera patches of a sinusoid drifting at the action's
    speed, the action and proprio rows carrying the speed and the phase."""
    speed = torch.rand(batch, 1, generator=gen) * 0.6 + 0.2
    phase0 = torch.rand(batch, 1, generator=gen) * 2 * math.pi
    cols = torch.arange(W, dtype=torch.float32)
    feats = torch.zeros(batch, T, H, W, PATCH)
    for t in range(T):
        phase = phase0 + speed * t
        for c in range(PATCH):
            feats[:, t, :5, :, c] = torch.sin(phase + cols * 0.7 + c)[:, None, :]
        feats[:, t, 5, 0:2, :] = torch.sin(phase)[:, :, None]
        feats[:, t, 5, 2:4, :] = speed[:, :, None]
    return feats.reshape(batch, T, H * W, PATCH)


def canvas_of(embed: FrameEmbedding, feats: torch.Tensor) -> torch.Tensor:
    return torch.cat([embed(feats[:, t], t) for t in range(feats.shape[1])], dim=1)


def train(model, embed, steps: int, batch: int = 16) -> float:
    params = list(model.parameters()) + list(embed.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    V = H * W
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        feats = episode(batch, gen)
        pred = model(canvas_of(embed, feats))  # (B, N, PATCH): frame t predicts frame t + 1
        pred = pred.reshape(batch, T, V, PATCH)[:, :-1]
        loss = (pred - feats[:, 1:]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


@torch.no_grad()
def rollout(model, embed, layout, context: int, check: bool):
    """Real frames up to ``context``, then the model's own predictions; returns the error of the
    predicted camera tokens and the mean step time next to a full recompute of the canvas."""
    gen = torch.Generator().manual_seed(1)
    truth = episode(1, gen)
    V = H * W
    frames, step_s, full_s = [], [], []
    feats = truth[:, 0]
    with canvas_core.incremental(model, layout) as roll:
        for t in range(T):  # a first pass builds each frame's index sets; roll.reset() keeps them
            roll.step(embed(truth[:, t], t))
        roll.reset()
        for t in range(T):
            x_t = embed(feats, t)
            frames.append(x_t)
            start = time.perf_counter()
            y_t = roll.step(x_t)  # (1, V, PATCH): the model's output at frame t
            step_s.append(time.perf_counter() - start)
            canvas = torch.cat(frames + [torch.zeros(1, (T - t - 1) * V, D)], dim=1)
            start = time.perf_counter()
            full = model(canvas)  # what a step costs without the cache (runs as usual here)
            full_s.append(time.perf_counter() - start)
            if check:
                assert torch.allclose(y_t, full[:, t * V:(t + 1) * V], atol=1e-4), t
            if t + 1 < T:  # the next frame: real in the context; after it, predicted camera
                feats = truth[:, t + 1].clone()  # tokens and the real action / proprio rows
                if t + 1 >= context:
                    feats[:, :CAMERA] = y_t[:, :CAMERA]
    err = (feats[:, :CAMERA] - truth[:, T - 1, :CAMERA]).abs().mean()
    return float(err), sum(step_s) / T, sum(full_s) / T


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--context", type=int, default=4, help="real frames before the model takes over")
    p.add_argument("--check", action="store_true", help="check each step against the full forward")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    layout = build_layout()
    model, embed = WorldModel(layout, args.depth), FrameEmbedding()
    loss = train(model, embed, args.steps)
    model.eval()
    err, step, full = rollout(model, embed, layout, args.context, args.check)
    print(f"trained {args.steps} steps: next-frame loss {loss:.4f}")
    print(f"rollout of {T} frames ({args.context} real): last camera frame off by {err:.3f} (mean abs)")
    print(f"per step: {step * 1e3:.1f} ms with the cache, {full * 1e3:.1f} ms recomputing the canvas "
          f"({step / full:.2f}x)" + ("; every step equals the full forward" if args.check else ""))
    return {"loss": loss, "error": err, "step_s": step, "full_s": full}


if __name__ == "__main__":
    main()
