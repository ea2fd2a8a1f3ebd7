"""canvas-plugin-cogvideox: graft looped attention onto diffusers' CogVideoXTransformer3DModel.

Registers the backbone adapter ``cogvideox`` lazily (registering imports neither torch nor
diffusers); the adapter lives in :mod:`canvas_plugin_cogvideox.adapter`.
"""

from __future__ import annotations

from canvas_core import hookimpl


__version__ = "0.1.0"


@hookimpl
def canvas_register_backbones(registry):
    registry.add(
        "cogvideox",
        "canvas_plugin_cogvideox.adapter:CogVideoXAdapter",
        model_classes=("diffusers.CogVideoXTransformer3DModel",),
        description="diffusers CogVideoXTransformer3DModel (CogVideoX 2B/5B, 1.0 and 1.5): "
        "dual-stream blocks, text tokens + video patches on the canvas",
        requires=("diffusers",),
    )


@hookimpl
def canvas_register_attention(registry):
    registry.add(
        "cogvideox",
        "canvas_plugin_cogvideox.attention:CogVideoXAttention",
        family="Dot-product",
        complexity="O(NM)",
        description="CogVideoX-native attention: the backbone's own attention when grafted, "
        "softmax cross-attention inside a canvas dispatcher",
    )


def __getattr__(name):
    if name == "CogVideoXAttention":  # lazy: importing the plugin never imports torch
        from canvas_plugin_cogvideox.attention import CogVideoXAttention

        return CogVideoXAttention
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
