"""Synthetic object sequences for the identity tests (plain torch, no canvas code)."""

from __future__ import annotations

import math

import torch


def _shuffle(toks: torch.Tensor, g: torch.Generator):
    B, N, D = toks.shape
    perm = torch.stack([torch.randperm(N, generator=g) for _ in range(B)])
    return torch.gather(toks, 1, perm[..., None].expand(-1, -1, D)), torch.argsort(perm, 1)


def crossing_objects(B: int, g: torch.Generator, D: int = 32, T: int = 8, n_noise: int = 4):
    """Two objects with random per-sequence identity vectors that move towards each other and
    cross mid-sequence, plus distractor noise tokens, shuffled every frame.

    Returns ``(frames, where)``: ``frames[t]`` is ``(B, 2 + n_noise, D)``; ``where[t][b, k]`` is the
    token index of object ``k`` at frame ``t``.
    """
    posmap = torch.randn(2, D, generator=torch.Generator().manual_seed(11)) * 1.6
    ident = torch.randn(B, 2, D, generator=g)
    ident = ident / ident.norm(dim=-1, keepdim=True) * math.sqrt(D)
    x0 = torch.tensor([-1.0, 1.0]).expand(B, 2) + 0.1 * torch.randn(B, 2, generator=g)
    vel = torch.tensor([2.0, -2.0]) / (T - 1)
    frames, where = [], []
    for t in range(T):
        pos = torch.stack([x0 + vel * t, 0.1 * torch.randn(B, 2, generator=g)], -1)  # (B, 2, 2)
        toks = torch.cat([ident + pos @ posmap, 0.7 * torch.randn(B, n_noise, D, generator=g)], 1)
        toks, inv = _shuffle(toks, g)
        frames.append(toks)
        where.append(inv[:, :2])
    return frames, where


def appearing_objects(B: int, g: torch.Generator, proto: torch.Tensor, T: int = 10, n_noise: int = 4,
                      present: torch.Tensor | None = None):
    """Objects of fixed prototypes ``proto (2, D)`` present on random frame intervals.

    Returns ``(frames, present)`` with ``present (B, 2, T)`` bool; an absent object's token is
    replaced by one more noise token.
    """
    D = proto.shape[1]
    if present is None:
        a = torch.randint(0, T, (B, 2), generator=g)
        b = torch.randint(0, T + 1, (B, 2), generator=g)
        lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        tt = torch.arange(T)[None, None]
        present = (tt >= lo[..., None]) & (tt < hi[..., None])
    frames = []
    for t in range(T):
        obj = proto[None] + 0.3 * torch.randn(B, 2, D, generator=g)
        toks = torch.cat([obj, 0.7 * torch.randn(B, n_noise, D, generator=g)], 1)
        keep = torch.cat([present[:, :, t], torch.ones(B, n_noise, dtype=torch.bool)], 1)
        toks = torch.where(keep[..., None], toks, 0.7 * torch.randn(B, 2 + n_noise, D, generator=g))
        frames.append(_shuffle(toks, g)[0])
    return frames, present
