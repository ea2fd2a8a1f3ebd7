"""canvas-engineering-compatible path: ``canvas_engineering.cogvideox`` is ``canvas_core.cogvideox``.

CogVideoX support lives in the optional distribution ``canvas-plugin-cogvideox``
(``pip install canvas-plugin-cogvideox``); this module re-exports it lazily through the plugin
registry (it never imports the plugin by name), so importing it never imports torch or diffusers:

* ``CogVideoXAttention``: attention type ``cogvideox`` (softmax cross-attention in a dispatcher).
* ``CogVideoXAdapter``, ``CanvasCogVideoXAttnProcessor``: the backbone adapter used by
  ``graft_looped_blocks`` on a ``diffusers.CogVideoXTransformer3DModel``.
* ``LoopedCogVideoXBlock(original_block, block_idx, max_loops, inner_dim)``: a
  :class:`~canvas_core.LoopedBlockWrapper` looping both streams (``hidden_states``,
  ``encoder_hidden_states``, each ``(B, N, inner_dim)``) of a ``CogVideoXBlock``.
* ``detect_inner_dim(transformer)``: ``num_attention_heads * attention_head_dim``.

Without the plugin, each name raises :class:`~canvas_core.errors.UnknownNameError` (also an
``AttributeError``) naming the distribution to install.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["CogVideoXAttention", "CogVideoXAdapter", "CanvasCogVideoXAttnProcessor",
           "LoopedCogVideoXBlock", "detect_inner_dim"]

_DIST = "canvas-plugin-cogvideox"
_cache: dict = {}


def _from_plugin(name: str) -> Any:
    """``CogVideoXAdapter`` (the ``cogvideox`` entry of the backbones registry) or a name defined
    beside it in the plugin (``CanvasCogVideoXAttnProcessor``). The plugin is reached through the
    registry that pluggy's entry-point loading fills, never imported by name."""
    from canvas_core.errors import CanvasError
    from canvas_core.plugins import get_registry
    from canvas_core.plugins.reexports import MissingPluginNameError, _from_plugin_module

    try:
        adapter = get_registry("backbones").get("cogvideox").load()
    except CanvasError as exc:
        raise MissingPluginNameError(
            f"canvas_core.cogvideox.{name} needs the optional distribution {_DIST} and diffusers: "
            f"pip install {_DIST} ({exc})") from None
    if name == "CogVideoXAdapter":
        return adapter
    value = getattr(sys.modules.get(adapter.__module__), name, None)
    if value is None:
        value = _from_plugin_module(_DIST, name)
    if value is None:
        raise MissingPluginNameError(
            f"canvas_core.cogvideox.{name}: the installed {_DIST} does not define it; "
            f"pip install --upgrade {_DIST}")
    return value


def detect_inner_dim(transformer: Any) -> int:
    """Hidden width of a CogVideoX transformer: ``num_attention_heads * attention_head_dim``."""
    return _from_plugin("CogVideoXAdapter")().hidden_size(transformer)


def _looped_block_class() -> type:
    from canvas_core.looping.wrapper import BlockIO, LoopedBlockWrapper

    class LoopedCogVideoXBlock(LoopedBlockWrapper):
        """Loop a ``CogVideoXBlock``: ``forward(hidden_states, encoder_hidden_states, temb,
        image_rotary_emb=None, **kwargs) -> (hidden_states, encoder_hidden_states)``, both streams
        ``(B, N, inner_dim)`` receiving per-iteration loop embeddings."""

        def __init__(self, original_block: Any, block_idx: int, max_loops: int, inner_dim: int,
                     **kwargs: Any) -> None:
            super().__init__(original_block, block_idx=block_idx, max_loops=max_loops, embed_dim=inner_dim,
                             io=BlockIO(("hidden_states", "encoder_hidden_states")),
                             stream_dims=(inner_dim, inner_dim), **kwargs)

        def forward(self, hidden_states: Any, encoder_hidden_states: Any, temb: Any,
                    image_rotary_emb: Any = None, **kwargs: Any) -> Any:
            """Loop the block over both streams; ``temb``, ``image_rotary_emb`` (given to the block
            only when not None) and any other keyword argument pass through unchanged."""
            if image_rotary_emb is not None:
                kwargs["image_rotary_emb"] = image_rotary_emb
            return super().forward(hidden_states, encoder_hidden_states, temb, **kwargs)

    LoopedCogVideoXBlock.__module__ = __name__
    return LoopedCogVideoXBlock


def __getattr__(name: str) -> Any:
    if name in _cache:
        return _cache[name]
    if name == "CogVideoXAttention":
        import canvas_core

        value = canvas_core.CogVideoXAttention  # install hint when the plugin is missing
    elif name in ("CogVideoXAdapter", "CanvasCogVideoXAttnProcessor"):
        value = _from_plugin(name)
    elif name == "LoopedCogVideoXBlock":
        value = _looped_block_class()
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _cache[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
