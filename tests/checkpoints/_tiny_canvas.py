"""The tiny canvas model the write-target tests save: a two-frame, one-region canvas and a head."""

from __future__ import annotations

from torch import nn

from canvas_core import CanvasLayout, CanvasSchema, CanvasTopology, SpatiotemporalCanvas

LAYOUT = CanvasLayout(T=2, H=1, W=2, d_model=4, regions={"v": (0, 2, 0, 1, 0, 2)})
SCHEMA = CanvasSchema(layout=LAYOUT, topology=CanvasTopology.causal_temporal(["v"]))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.canvas = SpatiotemporalCanvas(LAYOUT)
        self.head = nn.Linear(4, 2)
