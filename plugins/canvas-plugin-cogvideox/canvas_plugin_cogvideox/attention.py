"""The ``cogvideox`` attention function type.

Semantically "use the backbone's attention": inside a grafted CogVideoX transformer the backbone's
own multi-head attention (3D RoPE, joint text/video sequence, canvas bias installed by the adapter)
does the work. Inside a canvas ``AttentionDispatcher`` it is standard softmax cross-attention, so a
schema may declare ``default_attn="cogvideox"`` on regions that will live inside CogVideoX.
"""

from __future__ import annotations

from canvas_core import CrossAttention

__all__ = ["CogVideoXAttention"]


class CogVideoXAttention(CrossAttention):
    """Softmax cross-attention registered as type ``cogvideox``:
    ``(B, Nq, D), (B, Nk, D), (B, Nk, D) -> (B, Nq, D)``."""

    type_name = "cogvideox"
