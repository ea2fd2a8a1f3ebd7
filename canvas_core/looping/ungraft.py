"""Undo ``graft_looped_blocks``: put the backbone's own blocks (with their current, possibly
trained, weights) back, so the model saves and loads as the plain class again.

What a graft changes and how it is undone:

* each block replaced by a :class:`LoopedBlockWrapper`, a ``LoopedSpan`` or a ``SpanMember`` (span
  scopes) -> its ``original`` block; a wrapper that stands for several blocks in one slot offers
  ``ungraft_blocks()``, the list of the blocks it replaced, in order;
* the ``ModelLoop`` of ``scope="model"`` (``model.canvas_loop`` and the routed ``forward``) ->
  removed;
* the adapter's ``prepare`` (attention that honours ``beta`` and topologies) -> the adapter's
  ``unprepare(model)`` (``BackboneAdapter``'s own removes the input checks, then does the generic
  undo; an adapter without one gets the generic undo): a diffusers processor that
  holds the processor it replaced (``.original``, :class:`CanvasProcessorBase`) is swapped back,
  and a module whose class was switched to a canvas subclass of its class (``CanvasViTAttention``
  of timm's ``Attention``) gets its class back;
* the adapter record, the ``save_pretrained`` guard and the forward hooks that tell one model
  forward from the next (:func:`mark_forwards`) on the model -> removed;
* the freeze strategy -> every backbone parameter gets back the ``requires_grad`` it had before
  the graft (recorded by name at graft time; a parameter added since keeps its own, and so do
  those of a module put in place since and one set with a flag other than the graft left).
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from canvas_core.errors import BackboneError, CanvasTypeError
from canvas_core.looping.processor import CanvasAttentionHooks
from canvas_core.looping.span import SpanMember
from canvas_core.looping.scopes import PART_MARK, wrapped_blocks
from canvas_core.looping.loop_engine import LoopCore
from canvas_core.looping.span import LoopedSpan
from canvas_core.looping.wrapper import ForwardMark, LoopedBlockWrapper
from canvas_core.runtime.func_transforms import in_backward

__all__ = ["ungraft_looped_blocks", "guard_save_pretrained", "GraftedSaveRefused",
           "record_requires_grad", "keep_requires_grad", "mark_forwards", "FORWARD_MARK"]

_ADAPTER_ATTR = "_canvas_backbone_adapter"  # the attribute graft_looped_blocks sets
_SAVE_GUARD = "save_pretrained"
_MODEL_LOOP = "canvas_loop"  # where scope="model" keeps its ModelLoop (looping/model_loop.py)
GRADS_ATTR = "_canvas_pre_graft_requires_grad"  # {parameter name: requires_grad} before the graft
# model -> {parameter name: (weakref to the parameter, weakref to the module holding it, the
# requires_grad the graft left on it)}: what each recorded flag belongs to. Kept beside the model,
# not on it, so a deep copy or an unpickled model has no entry (its parameters are new objects)
# and falls back to the names alone.
_GRAD_OWNERS: "weakref.WeakKeyDictionary[nn.Module, Dict[str, Tuple[Any, Any, bool]]]" = (
    weakref.WeakKeyDictionary())


def _held(model: nn.Module) -> Dict[str, Tuple[nn.Parameter, nn.Module]]:
    """``{name: (parameter, the module holding it)}``, named as ``model.named_parameters()``."""
    out: Dict[str, Tuple[nn.Parameter, nn.Module]] = {}
    seen = set()
    for prefix, mod in model.named_modules():
        for pn, p in mod._parameters.items():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                out[f"{prefix}.{pn}" if prefix else pn] = (p, mod)
    return out


def record_requires_grad(model: nn.Module) -> Tuple[Dict[str, bool], Dict[str, Any]]:
    """Every parameter's ``requires_grad`` before a graft, ``{name: flag}`` (names survive deepcopy
    / pickle / ``.to()``), and ``{name: weakrefs to the parameter and its module}``; the graft
    keeps both with :func:`keep_requires_grad` once it has succeeded."""
    held = _held(model)
    return ({n: p.requires_grad for n, (p, _) in held.items()},
            {n: (weakref.ref(p), weakref.ref(mod)) for n, (p, mod) in held.items()})


def keep_requires_grad(model: nn.Module, flags: Dict[str, bool], owners: Dict[str, Any]) -> None:
    """Keep what :func:`record_requires_grad` read for ``ungraft_looped_blocks`` (called after the
    freeze strategy ran): the flags on the model (:data:`GRADS_ATTR`, so they travel with a copy),
    the owners and the flags the graft left on the parameters in the side table."""
    object.__setattr__(model, GRADS_ATTR, flags)
    _GRAD_OWNERS[model] = {n: (pr, mr, bool(p.requires_grad))
                           for n, (pr, mr) in owners.items() if (p := pr()) is not None}


class GraftedSaveRefused:
    """Stands in for ``model.save_pretrained`` while ``model`` is grafted: diffusers would write
    the blocks under ``transformer_blocks.<i>.original.*``, which ``from_pretrained`` of the plain
    class does not read (it re-initialises every block, so trained backbone weights are lost)."""

    def __init__(self, class_name: str) -> None:
        self.class_name = class_name

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise BackboneError(
            f"save_pretrained on a grafted {self.class_name} is refused: its blocks are looped "
            "wrappers, and from_pretrained of the plain class would re-initialise them (the trained "
            "backbone weights would be lost). Save the loop parameters with "
            "save_loop_checkpoint(looped_blocks, action_head, path), then call "
            "canvas_core.ungraft_looped_blocks(model) and save_pretrained the plain model; graft "
            "again and load_loop_checkpoint to continue"
        )


def guard_save_pretrained(model: nn.Module) -> None:
    """Make ``model.save_pretrained`` (diffusers / transformers) refuse while ``model`` is
    grafted (see :class:`GraftedSaveRefused`); a model without ``save_pretrained`` is left alone."""
    if callable(getattr(type(model), _SAVE_GUARD, None)):
        object.__setattr__(model, _SAVE_GUARD, GraftedSaveRefused(type(model).__name__))


#: the model attribute holding its :class:`ForwardMark` and the looped parts its forward hooks reset
FORWARD_MARK = "_canvas_forward_mark"


def _start_forward(model: nn.Module) -> None:
    """A call of ``model`` begins: the records of the forward before are dropped (the block
    wrappers' ``_loop_trace``, a span's or model loop's ``_stats``), so ``loop_stats`` /
    ``loop_counts`` report this forward's only and name the parts it did not run, and a span
    expects its first block again (``SpanMember`` refuses a forward entering inside the span).
    Only constants are stored while compiling (no guard on a value that changes per call);
    eagerly the forward is also numbered and marked as inside a call (:class:`ForwardMark`)."""
    mark, parts = model.__dict__[FORWARD_MARK]
    for p in parts:
        if isinstance(p, LoopedBlockWrapper):
            p._loop_trace = None
        elif isinstance(p, LoopCore):
            p._stats = None
            p._counts = None
            if isinstance(p, LoopedSpan):
                p._next_member = None
    if not torch.compiler.is_compiling():
        mark.n += 1
        mark.depth = 1  # set, not added: a call interrupted by Ctrl-C (no end hook) leaves nothing behind
        mark.last = -1


def _marked(module: nn.Module) -> bool:
    """Whether a hook of ``module`` should act now: grafted, not a DataParallel copy (which keeps
    its own records, refused by loop_stats), and not a recompute in backward (a checkpointed
    model is called again there; the forward's records stand)."""
    return (FORWARD_MARK in module.__dict__ and not getattr(module, "_is_replica", False)
            and (torch.compiler.is_compiling() or not in_backward()))


class ForwardStart:
    """Forward pre-hook of a grafted model: a model call begins (see :func:`_start_forward`).
    Stateless, a class at module level: it holds no reference to the model (no reference cycle)
    and pickles and deep-copies with the model."""

    def __call__(self, module: nn.Module, args: Any) -> None:
        if _marked(module):
            _start_forward(module)


class ForwardEnd:
    """Forward hook (run on an exception too) of a grafted model: its call has ended."""

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        if _marked(module) and not torch.compiler.is_compiling():
            module.__dict__[FORWARD_MARK][0].depth = 0


def mark_forwards(model: nn.Module, parts: List[nn.Module]) -> None:
    """Give ``model`` (just grafted) and its looped ``parts`` one :class:`ForwardMark`, and the
    hooks that start a forward on the model's call (:class:`ForwardStart`, :class:`ForwardEnd`).
    A forward run without calling the model (timm's ``forward_features``) is told by block order."""
    mark = ForwardMark()
    object.__setattr__(model, FORWARD_MARK, (mark, tuple(parts)))
    for p in parts:
        object.__setattr__(p, "_forward_mark", mark)
    model.register_forward_pre_hook(ForwardStart(), prepend=True)
    model.register_forward_hook(ForwardEnd(), always_call=True)


def _unmark_forwards(model: nn.Module) -> None:
    for _, parts in [model.__dict__.pop(FORWARD_MARK, (None, ()))]:
        for p in parts:
            p.__dict__.pop("_forward_mark", None)
    for m in model.modules():
        for hooks in (m._forward_pre_hooks, m._forward_hooks):
            for k in [k for k, h in hooks.items() if isinstance(h, (ForwardStart, ForwardEnd))]:
                del hooks[k]
                m._forward_hooks_always_called.pop(k, None)


def _drop_save_guard(model: nn.Module) -> None:
    if isinstance(model.__dict__.get(_SAVE_GUARD), GraftedSaveRefused):
        del model.__dict__[_SAVE_GUARD]


def _replacement(block: nn.Module, index: int) -> List[nn.Module]:
    # a block wrapper (also a wrapper_class= of yours keeping `original`), a span (its first block)
    # or a span member; a wrapper_class= wrapper keeping neither gives none (refused below)
    mods = wrapped_blocks(block)
    if not (mods or isinstance(block, LoopedBlockWrapper) or callable(getattr(block, "ungraft_blocks", None))
            or block.__dict__.get(PART_MARK) is True):  # not a looped part: the block itself
        return [block]
    if not mods or not all(isinstance(m, nn.Module) for m in mods):
        raise BackboneError(
            f"block {index} ({type(block).__name__}) does not say which backbone block(s) it "
            "replaced; ungraft_looped_blocks needs `original` or ungraft_blocks() -> [modules]"
        )
    return mods


def _plain_class(module: nn.Module) -> Any:
    """The backbone class a canvas attention class was switched from (``None``: not switched)."""
    cls = type(module)
    if not issubclass(cls, CanvasAttentionHooks) or CanvasAttentionHooks not in cls.__bases__:
        return None
    for base in cls.__bases__:
        if base is not CanvasAttentionHooks and issubclass(base, nn.Module) and base is not nn.Module \
                and not issubclass(base, CanvasAttentionHooks):
            return base
    return None


def _generic_unprepare(blocks: List[nn.Module]) -> None:
    for block in blocks:
        for m in block.modules():
            proc = getattr(m, "processor", None)
            if isinstance(proc, CanvasAttentionHooks) and callable(getattr(proc, "original", None)):
                setter = getattr(m, "set_processor", None)
                if callable(setter):
                    setter(proc.original)
                else:
                    m.processor = proc.original
            plain = _plain_class(m) if isinstance(m, CanvasAttentionHooks) else None
            if plain is not None:
                m.__class__ = plain
                for attr in ("beta", "canvas_topology", "canvas_bias", "canvas_has_key"):
                    m.__dict__.pop(attr, None)


def ungraft_looped_blocks(model: nn.Module, *, remove_topology: bool = False) -> List[nn.Module]:
    """Inverse of :func:`graft_looped_blocks`: restore ``model``'s own blocks in place.

    The restored blocks are the very modules the graft wrapped, with whatever weights they have now
    (trained with ``freeze="none"`` / ``"half"``), so ``model.save_pretrained(...)`` writes the
    plain layout and ``type(model).from_pretrained(...)`` loads every trained weight back.  The loop
    parameters are not part of the plain model: save them with ``save_loop_checkpoint`` (before or
    after ungrafting: the returned wrappers still hold them), then graft again and
    ``load_loop_checkpoint`` to get the looped model back. Every parameter gets back the
    ``requires_grad`` it had before the graft (which the freeze strategy changed).

    Args:
        model: a model grafted by ``graft_looped_blocks`` (or ``torch.compile``'s handle / a
            ``DataParallel`` holding it; a ``DistributedDataParallel`` is refused: ungraft its
            ``.module`` and wrap that again).
        remove_topology: an installed canvas topology changes what the backbone's attention reads,
            which the plain model cannot carry: ``False`` (default) refuses, ``True`` removes it.

    Returns:
        The removed looped parts, in order: the list ``graft_looped_blocks`` returned
        (``LoopedBlockWrapper`` or the ``wrapper_class=`` wrappers / the ``LoopedSpan`` / the
        ``ModelLoop``; a span's ``SpanMember`` placeholders hold no loop parameter and are left
        out), so ``save_loop_checkpoint(removed, head, path)`` writes the file the grafted model's
        parts would.

    Raises:
        BackboneError: ``model`` is not grafted, or carries a topology (see ``remove_topology``);
        the model is unchanged then.
    """
    if not isinstance(model, nn.Module):
        raise CanvasTypeError(f"ungraft_looped_blocks expects a torch nn.Module, got {type(model).__name__}")
    from canvas_core.looping.graft_atomic import unwrap_for_graft
    from canvas_core.runtime.compiled_names import wrapper_hint

    # torch.compile's handle / DataParallel: the model it holds (DistributedDataParallel refused)
    model = unwrap_for_graft(model, "ungraft_looped_blocks")
    adapter = model.__dict__.get(_ADAPTER_ATTR)
    if adapter is None:
        raise BackboneError(
            f"{type(model).__name__} is not grafted (graft_looped_blocks was not called on it, or it "
            f"was ungrafted already); there is nothing to ungraft.{wrapper_hint(model)}"
        )
    if not isinstance(remove_topology, bool):
        raise CanvasTypeError(f"ungraft_looped_blocks: remove_topology must be a bool, got {remove_topology!r}")
    blocks = adapter.blocks(model)
    plan = [_replacement(b, i) for i, b in enumerate(blocks)]  # everything checked before a change
    removed = [b for b, mods in zip(blocks, plan) if mods != [b] and not isinstance(b, SpanMember)]
    if adapter.installed_topology(model) is not None:
        if not remove_topology:
            raise BackboneError(
                f"{type(model).__name__} has a canvas topology installed; the plain backbone cannot "
                "carry it, so its outputs would change. Pass remove_topology=True (or call "
                "adapter.remove_topology(model) first) to ungraft anyway"
            )
        adapter.remove_topology(model)
    flat = [m for mods in plan for m in mods]
    if len(flat) == len(blocks):
        for i, m in enumerate(flat):
            if m is not blocks[i]:
                adapter.set_block(model, i, m)
    else:  # a span stood for several blocks: rebuild the container in order
        container = adapter.block_container(model)
        for key in list(container._modules):
            del container._modules[key]
        for i, m in enumerate(flat):
            container.add_module(str(i), m)
    if isinstance(model._modules.get(_MODEL_LOOP), nn.Module):  # scope="model"
        from canvas_core.looping.model_loop import remove_model_loop

        removed.append(remove_model_loop(model))
    restore = getattr(adapter, "unprepare", None)
    if callable(restore):
        restore(model)
    else:
        _generic_unprepare(flat)
    del model.__dict__[_ADAPTER_ATTR]
    _restore_requires_grad(model, model.__dict__.pop(GRADS_ATTR, None))
    _drop_save_guard(model)
    _unmark_forwards(model)
    _warn_first_loop_embeddings(removed)
    return removed


def _restore_requires_grad(model: nn.Module, flags: Any) -> None:
    """Give every parameter the ``requires_grad`` it had before the graft froze the backbone (a
    model grafted by an older version recorded nothing and keeps its current flags). A module put
    in place since the graft (a new head) keeps its parameters' own flags, and so does a parameter
    set on a module the graft saw with a flag other than the graft left there; one a load put in
    with the graft's flag carried over (``load_state_dict(assign=True)``) gets the recorded flag
    back. A model the side table does not know (a deep copy, an unpickled one) goes by name."""
    owners = _GRAD_OWNERS.pop(model, None)
    if not isinstance(flags, dict):
        return
    for name, (p, mod) in _held(model).items():
        flag = flags.get(name)
        if not isinstance(flag, bool) or p.requires_grad == flag:
            continue
        if owners is not None:
            pr, mr, left = owners.get(name, (None, None, None))
            if pr is None or (pr() is not p and (mr() is not mod or p.requires_grad != left)):
                continue
        p.requires_grad_(flag)


def _first_iteration_is_trained(part: nn.Module) -> bool:
    """Whether a loop parameter that acts in the first iteration is not zero: ``loop_emb[0]`` (of
    every stream) or a span's input injection (``inject_gate``, ``inject_proj``), which are added to
    the core's input at iteration 0 as well."""
    for name, p in part.named_parameters(recurse=False):
        if name.startswith("loop_emb") and p.dim() >= 2 and bool((p.detach()[0] != 0).any()):
            return True
        if name == "inject_gate" and bool((p.detach() != 0).any()):
            return True
    proj = part._modules.get("inject_proj")
    return isinstance(proj, nn.Module) and any(bool((p.detach() != 0).any()) for p in proj.parameters())


def _warn_first_loop_embeddings(parts: List[nn.Module]) -> None:
    """The first iteration adds ``loop_emb[0]`` (and a span's input injection) to the block's
    input: once trained it is not zero, and the plain model then differs from the grafted one even
    at one loop."""
    trained = [getattr(part, "block_idx", k) for k, part in enumerate(parts)
               if _first_iteration_is_trained(part)]
    if trained:
        warnings.warn(
            f"ungraft_looped_blocks: the first-iteration loop embeddings or input injection of looped "
            f"part(s) {trained} are not zero (trained), so the plain model's outputs differ from the "
            "grafted model's even at one loop. Every backbone weight is kept; graft_looped_blocks + load_loop_checkpoint "
            "gives the grafted model back", UserWarning, stacklevel=3)
