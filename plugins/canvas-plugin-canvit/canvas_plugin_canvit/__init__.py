"""canvas-plugin-canvit: Canvas Attention after CanViT (Berreby et al., arXiv:2603.22570).

Registers, through ``canvas_register_attention``, two attention types usable on any connection:

* ``canvas_read``: local queries read a persistent canvas (canvas keys / values unprojected);
* ``canvas_write``: the canvas queries local tokens (keys / values projected, optional convex gate);

both with scene-relative rotary position embeddings.  Also provides the recurrent pieces:
:class:`Viewpoint`, :func:`sample_at_viewpoint`, :class:`CanvasState`, :class:`CanViTCore`.
Torch-backed names load lazily; registering never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from canvas_core import hookimpl

__version__ = "0.1.0"

_LAZY = {
    "CanvasReadAttention": "canvas_plugin_canvit.attention",
    "CanvasWriteAttention": "canvas_plugin_canvit.attention",
    "SceneRoPE": "canvas_plugin_canvit.rope",
    "Viewpoint": "canvas_plugin_canvit.viewpoint",
    "sample_at_viewpoint": "canvas_plugin_canvit.viewpoint",
    "viewpoint_coords": "canvas_plugin_canvit.viewpoint",
    "grid_coords": "canvas_plugin_canvit.viewpoint",
    "default_coords": "canvas_plugin_canvit.viewpoint",
    "CanvasState": "canvas_plugin_canvit.model",
    "CanViTOutput": "canvas_plugin_canvit.model",
    "CanViTCore": "canvas_plugin_canvit.model",
}
__all__ = sorted(_LAZY)


@hookimpl
def canvas_register_attention(registry):
    registry.add(
        "canvas_read", "canvas_plugin_canvit.attention:CanvasReadAttention",
        family="Canvas", complexity="O(Nq * Nk)",
        description="CanViT canvas read: local queries (projected in/out) attend to unprojected canvas "
                    "keys/values, scene-relative RoPE; canvas width may differ (canvas_dim=)",
        requires=("torch",),
    )
    registry.add(
        "canvas_write", "canvas_plugin_canvit.attention:CanvasWriteAttention",
        family="Canvas", complexity="O(Nq * Nk)",
        description="CanViT canvas write: unprojected canvas queries attend to projected local "
                    "keys/values, scene-relative RoPE, optional convex gate (gate=True)",
        requires=("torch",),
    )


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'canvas_plugin_canvit' has no attribute {name!r}")
    return getattr(importlib.import_module(mod), name)
