"""canvas-plugin-mochi: graft looped attention onto diffusers' MochiTransformer3DModel.

Registers the backbone adapter ``mochi`` lazily; see :mod:`canvas_plugin_mochi.adapter`.
"""

from __future__ import annotations

from canvas_core import hookimpl


__version__ = "0.1.0"


@hookimpl
def canvas_register_backbones(registry):
    registry.add(
        "mochi",
        "canvas_plugin_mochi.adapter:MochiAdapter",
        model_classes=("diffusers.MochiTransformer3DModel",),
        description="diffusers MochiTransformer3DModel (Mochi 1): asymmetric dual-stream blocks, "
        "video patches + text tokens on the canvas",
        requires=("diffusers",),
    )
