"""Checks on the values a checkpoint loader is about to write into a model, shared by the canvas,
loop and sharded loaders.

* :func:`loaded_value` casts a tensor read from a file to the dtype of the model tensor it is
  loaded into, and refuses a value the model cannot hold: NaN or an infinity in the file, a finite
  value that overflows the model's dtype (``1e5`` into float16 would read ``inf``), and for the
  float8 dtypes a value beyond ``torch.finfo(dtype).max`` (``float8_e4m3fn`` would silently clamp
  ``1e5`` to ``448``).  The check runs on what would be written, not only on the file's tensor.
* :func:`refuse_differing_ties` refuses a file that holds different values for tensors that are
  one tensor in the model (tied weights, ``b.weight = a.weight``): loading it would keep whichever
  copy happened to be written last.
* :func:`unwritable` says why a model tensor cannot be written in place (an inference tensor
  outside ``torch.inference_mode()``, an expanded view), so a loader can refuse before its first copy.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Tuple

import torch

from canvas_core.errors import CheckpointError

__all__ = ["finite", "loaded_value", "refuse_differing_ties", "unwritable"]


def finite(t: torch.Tensor) -> torch.Tensor:
    """``torch.isfinite(t)``, also for the float8 dtypes, which it does not take: those are checked
    as float32 (NaN and infinities stay what they are).  The checkpoint savers use it too."""
    try:
        return torch.isfinite(t)
    except (NotImplementedError, RuntimeError):
        return torch.isfinite(t.to(torch.float32))


def _non_finite_count(t: torch.Tensor) -> int:
    """How many NaN / infinite values the floating or complex tensor ``t`` holds (float8 included)."""
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return 0
    return int((~finite(t)).sum())


def _is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a sharded ``DTensor`` (told by its attributes: ``sharded.is_dtensor`` lives
    in a module that imports this one)."""
    return isinstance(t, torch.Tensor) and hasattr(t, "placements") and callable(getattr(t, "to_local", None))


def _is_float8(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point and torch.empty(0, dtype=dtype).element_size() == 1


def loaded_value(t: torch.Tensor, dtype: torch.dtype, name: str, what: str) -> torch.Tensor:
    """``t`` (a tensor read from a file) cast to ``dtype`` (the model tensor's), or a
    :class:`CheckpointError` naming ``name`` in ``what`` (e.g. ``"canvas checkpoint 'w.st'"``)
    when the result would not be the file's value: NaN or an infinity in the file, a finite value
    that the cast turns into an infinity or NaN, or, for a float8 ``dtype``, a value beyond
    ``torch.finfo(dtype).max`` (which the cast clamps or turns into NaN).  Integer and bool tensors,
    and tensors already of ``dtype``, are returned unchanged after the NaN check; whether the kinds
    may be converted at all is :func:`~canvas_core.checkpoints.tensors.unfit_dtype`'s question."""
    bad = _non_finite_count(t)
    if bad:
        raise CheckpointError(f"{what}: tensor {name!r} holds NaN or infinite values ({bad} of its {t.numel()}); "
                              "the file is corrupt or the run that saved it diverged: load an earlier checkpoint")
    if t.dtype == dtype or not (t.is_floating_point() or t.is_complex()):
        return t
    fix = (f"load it into a model of the saved dtype ({t.dtype}) and convert the model afterwards (where you "
           "can check or rescale the values), or rescale the weights before saving")
    if _is_float8(dtype) and t.numel():
        top = torch.finfo(dtype).max
        beyond = int((t.to(torch.float32).abs() > top).sum()) if t.is_floating_point() else 0
        if beyond:
            raise CheckpointError(
                f"{what}: tensor {name!r} {tuple(t.shape)} is {t.dtype} in the file and {dtype} in the model, "
                f"whose largest value is {top:g}; {beyond} of the file's values lie beyond it, and the cast would "
                f"clamp them (or make them NaN) without telling; {fix}")
    out = t.to(dtype)
    bad = _non_finite_count(out)
    if bad:
        raise CheckpointError(
            f"{what}: tensor {name!r} {tuple(t.shape)} is {t.dtype} in the file and the model's tensor is {dtype}, "
            f"which cannot hold {bad} of its values (they would read inf or NaN: beyond {dtype}'s largest value "
            f"{torch.finfo(dtype).max if dtype.is_floating_point else 'range'}); {fix}")
    return out


def _storage_key(ref: Any) -> Any:
    """What makes two model tensors one tensor (tied weights): the same storage, offset, shape
    and strides; None for tensors without data (meta, lazy, empty)."""
    if isinstance(ref, torch.nn.parameter.UninitializedTensorMixin) or not isinstance(ref, torch.Tensor):
        return None
    if _is_dtensor(ref):  # tied DTensors are one object; their local shards share storage
        ref = ref.to_local()
    if ref.is_meta or ref.numel() == 0 or ref.layout != torch.strided:
        return None
    try:
        ptr = ref.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # a tensor subclass without a storage of its own
        return None
    return (ref.device, ptr, ref.storage_offset(), tuple(ref.shape), ref.stride(), ref.dtype)


def refuse_differing_ties(entries: Iterable[Tuple[str, Any, torch.Tensor]], what: str) -> None:
    """Refuse (:class:`CheckpointError`) when two names that are one tensor in the model (tied
    weights) get different values from the file.  ``entries``: ``(name, the model's tensor, the
    value to load)`` for every tensor to load; ``what`` says which file (``"canvas checkpoint
    'w.st'"``).  Nothing is changed."""
    first: Dict[Any, Tuple[str, torch.Tensor]] = {}
    for name, ref, value in entries:
        key = _storage_key(ref)
        if key is None:
            continue
        if key not in first:
            first[key] = (name, value)
            continue
        other, seen = first[key]
        same = seen.shape == value.shape and seen.dtype == value.dtype and torch.equal(seen, value)
        if not same:
            raise CheckpointError(
                f"{what}: tensors {other!r} and {name!r} are one tensor in the model (tied weights: they share "
                "storage) but the file holds different values for them, so loading would keep whichever was "
                "written last; the file was edited or written from a model without the tie: save it again from "
                "the tied model, or untie them (give one a tensor of its own) before loading")


def unwritable(ref: Any) -> str:
    """Why the model tensor ``ref`` cannot be written in place by a loader, or ``""``: an inference
    tensor outside ``torch.inference_mode()`` (torch refuses every change to it there), or an
    expanded view (stride 0: its elements share memory)."""
    if not isinstance(ref, torch.Tensor) or _is_dtensor(ref) or ref.is_meta:
        return ""
    if not torch.is_inference_mode_enabled() and ref.is_inference():
        return ("was made under torch.inference_mode() (an inference tensor), which torch lets no one change outside "
                "it; load inside `with torch.inference_mode():`, or build the modules outside inference mode to "
                "train them")
    if ref.layout == torch.strided and any(st == 0 and n > 1 for st, n in zip(ref.stride(), ref.shape)):
        return ("is an expanded view (stride 0: its elements share memory), which cannot be written in place; "
                "register a tensor of its own instead (.clone() of the expanded one), then load")
    return ""
