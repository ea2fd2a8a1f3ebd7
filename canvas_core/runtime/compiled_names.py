"""Names of modules and tensors as the plain model has them, whether or not ``torch.compile``
wrapped it: the wrapper (``OptimizedModule``) holds the model as ``_orig_mod``, so every name under
it gains an ``_orig_mod`` segment (``_orig_mod.attn.qkv.weight``; ``blocks.0._orig_mod.mlp...``
when blocks are compiled one by one).  Checkpoints and telemetry use the plain names, so that what
a compiled run writes matches what the plain model reads and reports."""

from __future__ import annotations

from torch import nn

__all__ = ["plain_name", "unwrap_compiled"]

_WRAPPED = "_orig_mod"


def plain_name(name: str) -> str:
    """``name`` (a dotted module, parameter or buffer name) without its ``_orig_mod`` segments."""
    return ".".join(part for part in name.split(".") if part != _WRAPPED)


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module ``torch.compile`` wrapped (through any number of wrappers), else ``model``."""
    while type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, _WRAPPED, None), nn.Module):
        model = getattr(model, _WRAPPED)
    return model
