"""Checkpoints that know their schema and writes that never destroy (see ``docs/checkpoints.md``).

Public: :func:`save_canvas_checkpoint`, :func:`load_canvas_checkpoint`, :func:`read_canvas_checkpoint_header`;
helpers for other writers: :func:`refuse_non_finite`, :func:`save_safetensors_atomic`.
"""

from canvas_core.checkpoints.canvas import (
    load_canvas_checkpoint,
    read_canvas_checkpoint_header,
    save_canvas_checkpoint,
)
from canvas_core.checkpoints.diff import schema_differences
from canvas_core.checkpoints.tensors import refuse_non_finite, save_safetensors_atomic

__all__ = [
    "save_canvas_checkpoint",
    "load_canvas_checkpoint",
    "read_canvas_checkpoint_header",
    "schema_differences",
    "refuse_non_finite",
    "save_safetensors_atomic",
]
