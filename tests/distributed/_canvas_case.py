"""The small two-region canvas the distributed workers share (their script folder is on sys.path)."""

from canvas_core import CanvasLayout, CanvasSchema, CanvasTopology

LAYOUT = CanvasLayout(T=2, H=2, W=4, d_model=16, regions={"v": (0, 2, 0, 1, 0, 4), "a": (0, 2, 1, 2, 0, 4)})
TOPO = CanvasTopology.causal_temporal(["v", "a"])
SCHEMA = CanvasSchema(layout=LAYOUT, topology=TOPO)
