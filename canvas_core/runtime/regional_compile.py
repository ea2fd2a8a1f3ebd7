"""Regional compilation: ``torch.compile`` the repeated block of a model once, reuse it for all.

A canvas model is usually a stack of identical blocks (norm, canvas attention, MLP).  Compiling
the whole model traces every block and hands the compiler one graph that grows with depth;
compiling each block instead traces the block's code once: blocks of the same class with the same
plan pass the same guards, so dynamo reuses the first block's graph for the others (their
parameters and plan buffers are inputs of the graph, not constants), and compile time no longer
grows with depth.  This is PyTorch's "regional compilation" recipe applied to canvas stacks.
A block's code must therefore read no per-block Python value (an index, a name) on its traced
path: dynamo guards on each one it reads, one graph per block (the looped wrapper builds its
error names only when it raises).  A first block fed views of another stride (CogVideoX's
slices of its joint sequence) compiles once more: still a fixed count, whatever the depth.

    from canvas_core import compile_blocks
    compiled = compile_blocks(model)               # finds model.blocks / layers / transformer_blocks
    compiled = compile_blocks(model, "encoder.layers", mode="max-autotune-no-cudagraphs")

The blocks are compiled in place (``nn.Module.compile``), so checkpoints, optimisers and DDP /
FSDP wrappers see the same module tree and the same parameter names as before.
"""

from __future__ import annotations

from typing import Any, List, Optional

from torch import nn

from canvas_core.errors import CanvasTypeError

__all__ = ["compile_blocks", "find_blocks"]

_BLOCK_ATTRS = ("blocks", "layers", "transformer_blocks", "h", "encoder.layers", "decoder.layers")


def _get(model: nn.Module, path: str) -> Any:
    obj: Any = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_blocks(model: nn.Module, block_attr: Optional[str] = None) -> List[nn.Module]:
    """The repeated blocks of ``model``: the modules of ``model.<block_attr>`` (an
    ``nn.ModuleList`` / ``nn.Sequential``), or of the first of ``blocks``, ``layers``,
    ``transformer_blocks``, ``h``, ``encoder.layers``, ``decoder.layers`` that exists."""
    if not isinstance(model, nn.Module):
        raise CanvasTypeError(f"compile_blocks expects an nn.Module, got {type(model).__name__}")
    paths = [block_attr] if block_attr is not None else list(_BLOCK_ATTRS)
    for path in paths:
        if not isinstance(path, str) or not path:
            raise CanvasTypeError(f"compile_blocks: block_attr must be an attribute path such as 'blocks', got {path!r}")
        seq = _get(model, path)
        if isinstance(seq, (nn.ModuleList, nn.Sequential)) and len(seq):
            return list(seq)
        if block_attr is not None:
            if seq is None:
                what = "missing"
            elif isinstance(seq, (nn.ModuleList, nn.Sequential)):
                what = f"an empty {type(seq).__name__}"
            else:
                what = f"a {type(seq).__name__}, not a list of blocks"
            raise CanvasTypeError(
                f"compile_blocks: {type(model).__name__}.{path} is {what}; block_attr must name a "
                "non-empty nn.ModuleList or nn.Sequential of blocks")
    raise CanvasTypeError(
        f"compile_blocks: {type(model).__name__} has none of {', '.join(_BLOCK_ATTRS)} as a non-empty "
        "nn.ModuleList / nn.Sequential; pass block_attr='path.to.blocks'")


def compile_blocks(model: nn.Module, block_attr: Optional[str] = None, **compile_kwargs: Any) -> List[nn.Module]:
    """Compile every repeated block of ``model`` in place with ``torch.compile`` and return them.

    Args:
        model: the model; it keeps its structure and parameter names.
        block_attr: attribute path of the block list (default: found, see :func:`find_blocks`).
        compile_kwargs: passed to ``torch.compile`` (``mode=``, ``dynamic=``, ``backend=``, ...).
    """
    blocks = find_blocks(model, block_attr)
    before = [b.__dict__.get("_compiled_call_impl") for b in blocks]
    try:
        for block in blocks:
            block.compile(**compile_kwargs)
    except Exception as exc:  # torch refuses the options (mode, backend, unknown keyword)
        for block, old in zip(blocks, before):  # the model stays as it was
            block._compiled_call_impl = old
        first = (str(exc).splitlines() or [""])[0]
        raise CanvasTypeError(
            f"compile_blocks: torch.compile refused the options {compile_kwargs!r} "
            f"({type(exc).__name__}: {first}); no block was "
            "compiled. Pass options torch.compile accepts (mode=, dynamic=, backend=, fullgraph=, options=)"
        ) from exc
    return blocks
