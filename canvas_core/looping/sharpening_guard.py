"""Sharpening refuses a call once the attention it acts on was replaced.

A looped part with a sharpening schedule sets ``beta`` on the canvas attention the adapter's
``prepare`` installed in its blocks (diffusers processors, timm attention modules).  Diffusers'
``model.set_attn_processor(...)`` / ``model.fuse_qkv_projections()`` put other processors in their
place, which ignore ``beta``: the schedule would silently stop acting.  ``prepare`` records here,
per block, where each canvas attention sits; the model's input guard (the forward pre-hook of
``installed.guard_input_shapes``, as for an installed topology) compares those places by identity
on every call and refuses the call when a block whose part has sharpening on lost its attention.
Identity tests only: no device sync and no graph break; a block's sharpening is read only once a
replacement was found.  A module wrapping the attention (activation checkpointing, torch.compile)
is accepted then, and remembered; replacing the diffusers ``Attention`` module holding a canvas
processor counts as replacing the processor.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from torch import nn

from canvas_core.errors import BackboneError
from canvas_core.looping.installed import AttentionPlaces, with_holders
from canvas_core.looping.wrapper import _beta_targets

__all__ = ["SharpeningGuard", "record_sharpened_attention", "SHARPENING_ATTR"]

#: key of a prepared model's ``__dict__`` holding its :class:`SharpeningGuard`
SHARPENING_ATTR = "_canvas_sharpening_guard"


class SharpeningGuard:
    """Takes an installed topology's place in the model's own input guard while none is
    installed: :meth:`check_attention` refuses a call once sharpened attention was replaced.

    ``container``: the model's block list; ``owners``: ``(position, owner, attr, attention)`` per
    canvas attention (and per attention module holding a canvas processor), ``getattr(owner,
    attr)`` being ``attention`` as ``prepare`` left it; a module wrapping it is accepted."""

    def __init__(self, backbone: str, container: nn.Module, owners: Tuple[Tuple[int, Any, str, Any], ...]) -> None:
        self.backbone = backbone
        self.container = container
        self.owners = owners
        self.places = AttentionPlaces(owners)

    def check_shapes(self, given: Any) -> None:
        return None  # no token layout without a topology

    def check_attention(self) -> None:
        """Refuse (``BackboneError``) a call once the attention of a sharpened block was replaced."""
        if not self.places.intact():
            self._refuse_if_sharpened()

    def _refuse_if_sharpened(self) -> None:
        # (the error path: a replacement was found; without sharpening the model runs as before)
        gone: List[str] = []
        for pos, now in self.places.replaced():
            if _sharpening_at(self.container, pos) is not None:
                gone.append(f"block {pos} ({type(now).__name__})")
        if gone:
            raise BackboneError(
                f"this call of the model is refused: the canvas attention that sharpening acts on in "
                f"backbone {self.backbone!r} was replaced after it was prepared, in {', '.join(dict.fromkeys(gone))} "
                "(e.g. by model.set_attn_processor(...) or model.fuse_qkv_projections()); that attention "
                "ignores the inverse temperature `beta`, so the sharpening schedule would silently stop "
                "acting. Put the canvas processors back (model.unfuse_qkv_projections() after fusing), or "
                "call adapter.prepare(model) to give the new processors canvas attention again (it wraps the "
                "backbone's own processor classes, e.g. after set_attn_processor(CogVideoXAttnProcessor2_0())), "
                "or turn sharpening off for those blocks (set_sharpening(None) on their looped part)")


def _sharpening_at(container: nn.Module, pos: int) -> Optional[Any]:
    """The sharpening schedule of the looped part running block ``pos`` (None: none)."""
    if pos >= len(container):
        return None
    block = container[pos]
    part = block.__dict__.get("_span", block)  # a span member: its span runs the block
    return getattr(part, "sharpening", None)


def _owners_in(block: nn.Module, pos: int) -> List[Tuple[int, Any, str, Any]]:
    """``(pos, owner, attr, attention)`` for each attention of ``block`` that honours ``beta``: a
    processor held by its attention module, or a module held by its parent; and the attention
    module holding such a processor, held by its parent (replacing that module drops it too)."""
    want = {id(t) for t in _beta_targets(block)}
    out, seen = [], set()
    for parent in block.modules():
        proc = parent.__dict__.get("processor")
        places = [("processor", proc)] if proc is not None else []
        places += list(parent._modules.items())
        for attr, child in places:
            if child is not None and id(child) in want and id(child) not in seen:
                seen.add(id(child))
                out.append((pos, parent, attr, child))
    return list(with_holders(block, tuple(out)))


def record_sharpened_attention(adapter: Any, model: nn.Module) -> Optional[SharpeningGuard]:
    """Record where the canvas attention of every block of ``model`` sits (``prepare`` calls it,
    once it installed them), as the model's :class:`SharpeningGuard`; None (and nothing kept) when
    no block has attention that honours ``beta`` or the adapter finds no blocks."""
    model.__dict__.pop(SHARPENING_ATTR, None)
    try:
        container = adapter.block_container(model)
    except BackboneError:
        return None
    owners = tuple(o for pos, block in enumerate(container) for o in _owners_in(block, pos))
    if not owners:
        return None
    guard = SharpeningGuard(getattr(adapter, "name", type(adapter).__name__), container, owners)
    model.__dict__[SHARPENING_ATTR] = guard
    return guard
