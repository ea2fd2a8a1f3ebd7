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

from canvas_core._lazy import lazy_exports

__all__ = ["CogVideoXAttention", "CogVideoXAdapter", "CanvasCogVideoXAttnProcessor",
           "LoopedCogVideoXBlock", "detect_inner_dim"]

_DIST = "canvas-plugin-cogvideox"


def _from_plugin(name: str) -> Any:
    """``CogVideoXAdapter`` (the ``cogvideox`` entry of the backbones registry) or a name defined
    beside it in the plugin (``CanvasCogVideoXAttnProcessor``). The plugin is reached through the
    registry that pluggy's entry-point loading fills, never imported by name."""
    from canvas_core.errors import CanvasError
    from canvas_core.plugins import get_spec
    from canvas_core.reexports import MissingPluginNameError, _from_plugin_module

    try:
        adapter = get_spec("backbones", "cogvideox").load()
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


__getattr__, __dir__ = lazy_exports(__name__, {
    "CogVideoXAttention": "canvas_core",  # the top-level name gives the install hint when missing
    "CogVideoXAdapter": lambda: _from_plugin("CogVideoXAdapter"),
    "CanvasCogVideoXAttnProcessor": lambda: _from_plugin("CanvasCogVideoXAttnProcessor"),
    "LoopedCogVideoXBlock": "canvas_core.looping.cogvideox_block",
}, globals())
