"""Key masks of attention types: the one reading of ``key_mask`` that every type shares.

A ``key_mask`` is None, a bool mask (True = may attend), an integer mask (0 = blocked) or an
additive float mask (``-inf`` = blocked, finite values are added to the logits; NaN and ``+inf``
are refused).  It broadcasts to ``(B, Nq, Nk)``: ``(Nk,)``, ``(Nq, Nk)``, ``(B, 1, Nk)``,
``(B, Nq, Nk)``, and a last dimension of 1 (``(Nq, 1)``, ``(B, 1, 1)``, 0-d) gives every key the
same answer.  A 2-d mask whose first dimension is ``B`` but neither ``Nq`` nor 1 is ``(B, Nk)``.
Plugins reach these functions through ``canvas_core.extend``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from canvas_core.errors import CanvasTypeError, ShapeError

__all__ = ["check_additive_mask", "check_key_mask", "linked_keys", "normalize_key_mask"]


def linked_keys(key_mask: torch.Tensor) -> torch.Tensor:
    """``key_mask`` as bool, True = linked, the way every type reads it: a bool mask as it is, an
    additive float one blocks with ``-inf`` only (its 0 means linked), an integer one with 0."""
    if key_mask.dtype == torch.bool:
        return key_mask
    return key_mask != float("-inf") if key_mask.is_floating_point() else key_mask != 0


def check_additive_mask(type_name: str, key_mask: torch.Tensor) -> None:
    """Refuse a float ``key_mask`` holding NaN or ``+inf`` (:class:`ShapeError` naming the type):
    softmax types would return NaN rows and the scan types would read such a key as linked.

    One reduction (the mask's maximum, NaN when it holds one) and one host sync, paid by float
    masks only: bool and integer masks (what the canvas runtime passes) are not looked at.  Where
    no value can be read (a ``torch.compile`` trace, ``vmap``, meta or fake tensors) the mask is
    used as given."""
    if not key_mask.is_floating_point() or key_mask.numel() == 0 or torch.compiler.is_compiling():
        return
    try:
        top = key_mask.amax()
        bad = bool(torch.isnan(top) | torch.isposinf(top))
    except Exception:  # vmap, meta and fake tensors have no value to read
        return
    if bad:
        raise ShapeError(
            f"{type_name}: the additive float key_mask of shape {tuple(key_mask.shape)} holds NaN or "
            "+inf; it may hold finite values (added to the logits) and -inf (a blocked key) only: "
            "replace them (e.g. key_mask.nan_to_num(nan=float('-inf'), posinf=0.0)) or pass a bool "
            "mask (True = may attend)"
        )


def _check_kind(owner: str, key_mask) -> None:
    """A dense tensor of a real dtype, or :class:`CanvasTypeError` naming ``owner`` and the fix."""
    if not isinstance(key_mask, torch.Tensor):
        raise CanvasTypeError(
            f"{owner}: key_mask must be a torch.Tensor or None, got {type(key_mask).__name__}; pass "
            "a bool tensor (True = may attend)"
        )
    if key_mask.layout != torch.strided:
        raise CanvasTypeError(
            f"{owner}: key_mask must be a dense tensor, got layout {key_mask.layout}; pass "
            "key_mask.to_dense()"
        )
    if key_mask.is_complex() or key_mask.is_quantized:
        # a complex "additive" mask has no order: its -inf would read as linked (it is != 0)
        fix = "key_mask.real" if key_mask.is_complex() else "key_mask.dequantize()"
        raise CanvasTypeError(
            f"{owner}: key_mask has dtype {key_mask.dtype}; pass a bool mask (True = may attend) or "
            f"a real float additive mask (-inf = blocked), e.g. {fix}"
        )


def _check_device(owner: str, key_mask: torch.Tensor, like: Optional[torch.Tensor]) -> None:
    if like is not None and key_mask.device != like.device:
        raise ShapeError(
            f"{owner}: key_mask is on {key_mask.device} but the queries are on {like.device}; "
            f"move it with key_mask.to({str(like.device)!r})"
        )


def check_key_mask(owner: str, key_mask: Optional[torch.Tensor], like: Optional[torch.Tensor] = None) -> None:
    """Refuse what :func:`normalize_key_mask` refuses except a shape, with the same errors, for a
    caller that hands the mask on unchanged.  Only attribute checks for a bool or integer mask (no
    tensor operation, no host sync); a float mask pays :func:`check_additive_mask`'s one sync."""
    if key_mask is None:
        return
    _check_kind(owner, key_mask)
    _check_device(owner, key_mask, like)
    check_additive_mask(owner, key_mask)


def normalize_key_mask(
    owner: str,
    key_mask: Optional[torch.Tensor],
    B: int,
    Nq: int,
    Nk: int,
    like: Optional[torch.Tensor] = None,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Read ``key_mask`` for a call with ``B`` batch items, ``Nq`` queries and ``Nk`` keys.

    Args:
        owner: the name errors start with (an attention type's ``type_name``).
        key_mask: None or a mask as the module docstring describes.
        B, Nq, Nk: the sizes of the call.
        like: the queries; when given the mask must be on their device.

    Returns:
        ``(allowed, bias)``, each ``(B|1, Nq|1, Nk)`` (views where no copy is needed) or None.
        ``allowed`` is bool (True = may attend); ``bias`` is set for float masks only: the mask's
        values where allowed, 0 where blocked.  ``(None, None)`` for ``key_mask=None``.

    Raises:
        CanvasTypeError: not a tensor, not dense, or a complex / quantized dtype.
        ShapeError: on another device than ``like``, not broadcastable to ``(B, Nq, Nk)``, or a
            float mask holding NaN or ``+inf``.
    """
    if key_mask is None:
        return None, None
    _check_kind(owner, key_mask)
    _check_device(owner, key_mask, like)
    m = key_mask
    if m.dim() == 2 and m.shape[0] == B and m.shape[0] != Nq and m.shape[0] != 1:
        m = m[:, None, :]  # (B, Nk)
    if m.dim() > 3:
        raise ShapeError(
            f"{owner}: key_mask of shape {tuple(key_mask.shape)} must broadcast to "
            f"(B, Nq, Nk) = {(B, Nq, Nk)}"
        )
    while m.dim() < 3:
        m = m[None]
    if not all(s in (1, full) for s, full in zip(m.shape, (B, Nq, Nk))):
        raise ShapeError(
            f"{owner}: key_mask of shape {tuple(key_mask.shape)} does not broadcast to "
            f"(B, Nq, Nk) = {(B, Nq, Nk)}"
        )
    check_additive_mask(owner, key_mask)
    if m.shape[-1] != Nk:  # one entry for every key, as torch broadcasts it (a view, no copy)
        m = m.expand(*m.shape[:-1], Nk)
    allowed = linked_keys(m)
    if not m.is_floating_point():
        return allowed, None
    bias = torch.where(allowed, m, torch.zeros((), dtype=m.dtype, device=m.device))
    return allowed, bias
