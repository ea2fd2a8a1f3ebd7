"""Small canvas models for the rollout tests: pre-norm blocks of a canvas layer and an MLP."""

from __future__ import annotations

import torch
from torch import nn

from canvas_core.compiler.lowering import lower
from canvas_core.errors import TopologyError
from canvas_core.runtime.canvas_attention import CanvasAttention
from canvas_core.runtime.rollout_plan import check_causal
from canvas_core.schema import CanvasTopology

#: every builtin type, and the mamba plugin's type
TYPES = ("cross_attention", "self_attention", "cosine_attention", "sparse_attention", "local_attention",
         "random_fixed", "gated", "perceiver", "linear_attention", "sigmoid_attention", "pooling", "copy",
         "none", "mixture", "rwkv", "hyena", "mamba")


class Block(nn.Module):
    """``x + attn(norm(x)) - norm(x)``, then ``x + mlp(norm(x))``: ``(B, N, D) -> (B, N, D)``."""

    def __init__(self, topology, layout, n_heads: int = 2, residual: str = "state") -> None:
        super().__init__()
        d = layout.d_model
        self.residual = residual
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = CanvasAttention(topology, layout, n_heads=n_heads,
                                    **({"returns": "delta"} if residual == "returns_delta" else {}))
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        if self.residual == "state":
            x = x + self.attn(h) - h
        elif self.residual == "delta":
            x = x + self.attn.delta(h)
        else:  # returns="delta": forward gives the change
            x = x + self.attn(h)
        return x + self.mlp(self.norm2(x))


def build_model(topology, layout, depth: int, seed: int = 0, residual: str = "state") -> nn.Module:
    """``depth`` blocks and a linear head, float64, eval mode, every parameter random (so gates that
    start at zero are open)."""
    torch.manual_seed(seed)
    model = nn.Sequential(*[Block(topology, layout, residual=residual) for _ in range(depth)],
                          nn.Linear(layout.d_model, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.double().eval()


def causal_only(connections, layout):
    """The connections that read no later frame (each checked on its own)."""
    keep = []
    for c in connections:
        try:
            check_causal(lower(CanvasTopology(connections=[c]), layout))
        except TopologyError:
            continue
        keep.append(c)
    return keep


def frames(x: torch.Tensor, V: int):
    """``(B, T * V, D)`` -> the ``(B, V, D)`` frames."""
    return [x[:, t * V:(t + 1) * V] for t in range(x.shape[1] // V)]
