"""Names of modules and tensors as the plain model has them, whatever wraps it.

A wrapper holds the model (or one of its layers) as an attribute, so every name under it gains one
segment that the plain model does not have:

* ``torch.compile``'s ``OptimizedModule`` holds it as ``_orig_mod`` (``_orig_mod.attn.qkv.weight``;
  ``blocks.0._orig_mod.mlp...`` when blocks are compiled one by one);
* ``DistributedDataParallel`` and ``DataParallel`` hold it as ``module`` (``module.head.weight``);
* sequence parallelism (``parallelize_canvas``) puts a ``SequenceParallelCanvasAttention`` in
  the place of each canvas attention layer, holding it as ``attn`` (``blocks.0.attn.attn.qkv...``);
  such a wrapper class says so with a class attribute ``canvas_wrapped_attr = "attn"``.

Other wrappers are not guessed: a submodule called ``module`` is as often a part of the model as
a wrapped model. A wrapper class of your own is unwrapped like these when it declares the
attribute it holds the model under, ``canvas_wrapped_attr = "module"``; :func:`wrapper_hint` is
the sentence the errors of grafting and freezing add when they meet an undeclared one.

Checkpoints and telemetry use the plain names (:func:`plain_names`), so that what a compiled,
data-parallel or sequence-parallel run writes matches what the plain model reads and reports, and
the other way round.  Only a segment under an actual wrapper is dropped: a submodule that happens
to be called ``module`` or ``attn`` keeps its name.  (``_orig_mod`` is dropped wherever it appears,
as files of compiled models written before this kept it.)
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Iterable, Iterator, Optional

from torch import nn

__all__ = ["plain_name", "plain_names", "wrapped_paths", "unwrap_compiled", "unwrap_model", "wrapper_chain",
           "wrapper_hint"]

_WRAPPED = "_orig_mod"


def _held_attr(module: nn.Module) -> Optional[str]:
    """The attribute under which ``module``, a wrapper, holds the module it wraps, else None."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    if type(module).__name__ == "OptimizedModule" and isinstance(getattr(module, _WRAPPED, None), nn.Module):
        return _WRAPPED
    if isinstance(module, (DistributedDataParallel, DataParallel)) and isinstance(
            getattr(module, "module", None), nn.Module):
        return "module"
    attr = getattr(type(module), "canvas_wrapped_attr", None)
    if isinstance(attr, str) and isinstance(module._modules.get(attr), nn.Module):
        return attr
    return None


def wrapped_paths(model: nn.Module) -> FrozenSet[str]:
    """The dotted names (in ``model``) of every module a wrapper inside ``model`` holds: the
    segments :func:`plain_name` drops.  ``model`` itself may be a wrapper."""
    out = set()
    for path, module in model.named_modules(remove_duplicate=False):
        attr = _held_attr(module)
        if attr is not None:
            out.add(f"{path}.{attr}" if path else attr)
    return frozenset(out)


def plain_name(name: str, wrapped: Iterable[str] = ()) -> str:
    """``name`` (a dotted module, parameter or buffer name) without its ``_orig_mod`` segments
    and without the segments at the paths ``wrapped`` (from :func:`wrapped_paths`)."""
    wrapped = wrapped if isinstance(wrapped, (set, frozenset)) else frozenset(wrapped)
    parts = name.split(".") if name else []
    keep = [part for i, part in enumerate(parts)
            if part != _WRAPPED and not (wrapped and ".".join(parts[:i + 1]) in wrapped)]
    return ".".join(keep)


def plain_names(model: nn.Module, names: Iterable[str]) -> Dict[str, str]:
    """``{name: plain name}`` for names of ``model``'s tensors or modules (``state_dict`` keys,
    ``named_modules`` names), with every wrapper's segment dropped (see the module docstring)."""
    wrapped = wrapped_paths(model)
    return {n: plain_name(n, wrapped) for n in names}


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module ``torch.compile`` wrapped (through any number of wrappers), else ``model``."""
    while type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, _WRAPPED, None), nn.Module):
        model = getattr(model, _WRAPPED)
    return model


def wrapper_chain(model: nn.Module) -> Iterator[nn.Module]:
    """``model``, then the module each wrapper holds, down to the first module that wraps nothing
    (``torch.compile``, ``DistributedDataParallel``, ``DataParallel``, a sequence-parallel layer,
    in any order)."""
    while model is not None:
        yield model
        attr = _held_attr(model)
        model = getattr(model, attr) if attr is not None else None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside any number of wrappers (:func:`wrapper_chain`'s last), else ``model``."""
    return list(wrapper_chain(model))[-1]


def wrapper_hint(model: nn.Module) -> str:
    """A sentence for errors about ``model`` when it looks like an undeclared wrapper (it holds a
    module as ``module``, and no wrapper above is recognised as holding it), else ``""``."""
    inner = unwrap_model(model)
    held = inner._modules.get("module") if isinstance(inner, nn.Module) else None
    if not isinstance(held, nn.Module):
        return ""
    name = type(inner).__name__
    return (f" If {name} is a wrapper holding your model as .module, pass {name}.module, or declare "
            f"it on the wrapper class (canvas_wrapped_attr = \"module\") so canvas-core unwraps it as "
            "it unwraps DataParallel")
