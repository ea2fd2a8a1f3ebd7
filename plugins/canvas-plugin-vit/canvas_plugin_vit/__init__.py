"""canvas-plugin-vit: graft looped attention onto timm Vision Transformers.

Registers the backbone adapter ``vit`` lazily; see :mod:`canvas_plugin_vit.adapter`.
"""

from __future__ import annotations

from canvas_core import hookimpl


__version__ = "0.1.0"


@hookimpl
def canvas_register_backbones(registry):
    registry.add(
        "vit",
        "canvas_plugin_vit.adapter:ViTAdapter",
        model_classes=("timm.VisionTransformer",),
        description="timm VisionTransformer (timm.create_model('vit_*')): prefix (CLS/register) "
        "tokens + patch grid on the canvas",
        requires=("timm",),
    )
