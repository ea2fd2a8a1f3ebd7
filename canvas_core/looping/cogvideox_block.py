"""`LoopedCogVideoXBlock`: a :class:`~canvas_core.looping.wrapper.LoopedBlockWrapper` for a
diffusers ``CogVideoXBlock`` (two streams); handed out under canvas-engineering's path
``canvas_core.cogvideox.LoopedCogVideoXBlock``."""

from __future__ import annotations

from typing import Any

from canvas_core.looping.wrapper import BlockIO, LoopedBlockWrapper

__all__ = ["LoopedCogVideoXBlock"]


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
