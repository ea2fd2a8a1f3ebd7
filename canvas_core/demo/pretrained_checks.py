"""Checks that a ``--pretrained`` backbone was loaded whole, run by the demo's loaders before they
return the model.

diffusers and timm both accept weights that do not fit the model they build: a tensor the file
lacks keeps what the model was built with (random values, or uninitialised memory for diffusers),
a tensor the model lacks is dropped with a log line at most, and NaN or infinite values are copied
in as they are.  The demo would then train a half-loaded backbone.  :func:`refuse_partial_load`
compares the tensor names in the safetensors headers (read with ``safe_open``: names only, no
data) with the loaded model's ``state_dict`` and checks every tensor that came from the files for
finiteness; on any mismatch it raises :class:`BackboneError` naming the file, a few of the keys
with their count, and the fix.  The model is never returned half-loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, Iterable, List

from torch import nn

from canvas_core.checkpoints.loaded_values import finite
from canvas_core.errors import BackboneError

__all__ = ["diffusers_weight_files", "refuse_partial_load", "vit_dropped_head"]

#: how many keys a message names before it gives the count
SHOWN = 3


def _few(keys: List[str]) -> str:
    """``['a', 'b', 'c'] and 5 more`` for a sorted list of keys."""
    more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return f"{keys[:SHOWN]}{more}"


def _tensors(n: int) -> str:
    return f"{n} tensor{'s' if n != 1 else ''}"


def diffusers_weight_files(folder: Path) -> List[Path]:
    """The safetensors files ``from_pretrained(use_safetensors=True)`` reads from ``folder``, in the
    same order of preference as diffusers: the shards named by
    ``diffusion_pytorch_model.safetensors.index.json`` when it exists, else
    ``diffusion_pytorch_model.safetensors``."""
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if not index.is_file():
        return [folder / "diffusion_pytorch_model.safetensors"]
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackboneError(f"{str(index)!r} is not a readable shard index ({exc}); write the directory again "
                            "with save_pretrained") from None


def _file_keys(files: Iterable[Path]) -> Dict[str, Path]:
    """Tensor name -> the file holding it, from the safetensors headers only (no tensor is read)."""
    from safetensors import safe_open

    keys: Dict[str, Path] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                keys.update((k, file) for k in f.keys())
        except Exception as exc:  # noqa: BLE001 - any unreadable header is the same user error
            raise BackboneError(f"{str(file)!r} is not a readable safetensors file ({exc}); write the "
                                "weights again") from None
    return keys


def _where(keys: Dict[str, Path], names: Iterable[str]) -> str:
    """The file(s) that hold ``names``, quoted."""
    files = sorted({str(keys[n]) for n in names})
    return ", ".join(repr(f) for f in files[:SHOWN]) + (f" and {len(files) - SHOWN} more files" if len(files) > SHOWN else "")


def _describe(files: List[Path]) -> str:
    """``'/d/model.safetensors'``, or ``the 11 shards in '/d'``."""
    if len(files) == 1:
        return repr(str(files[0]))
    return f"the {len(files)} shards in {str(files[0].parent)!r}"


def vit_dropped_head(model: nn.Module) -> Callable[[str], bool]:
    """Which file keys a timm model leaves out on purpose: built with ``num_classes=0`` it has no
    classifier, and timm drops the classifier's weight and bias (``pretrained_cfg['classifier']``,
    e.g. ``head``) from a file saved with one.  Those keys are expected in the file; any other key
    the model lacks is not."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    names = (names,) if isinstance(names, str) else tuple(names)
    own = set(model.state_dict())
    head = {f"{n}.{p}" for n in names for p in ("weight", "bias")} - own
    return head.__contains__


def refuse_partial_load(model: nn.Module, files: List[Path], what: str, fix: str,
                        expected_extra: Callable[[str], bool] = lambda key: False) -> None:
    """Raise :class:`BackboneError` unless ``model`` holds exactly the tensors of ``files`` (its
    safetensors weights), all finite.

    ``what`` names the load (``"--pretrained '/dir'"``), ``fix`` says how to mend a directory whose
    names do not match (e.g. "write it again with save_pretrained"); ``expected_extra(key)`` is true
    for file keys the model leaves out on purpose (:func:`vit_dropped_head`).  Checks names first
    (a tensor of the model missing from the files, a tensor of the files the model lacks), then
    values (NaN or infinities in a loaded tensor, the model's dtype included)."""
    keys = _file_keys(files)
    state = model.state_dict()
    missing = sorted(k for k in state if k not in keys)
    unexpected = sorted(k for k in keys if k not in state and not expected_extra(k))
    if missing or unexpected:
        where = _describe(files)
        parts = []
        if missing:
            one = len(missing) == 1
            parts.append(f"{_tensors(len(missing))} of the {type(model).__name__} {'is' if one else 'are'} not in "
                         f"the weights ({_few(missing)}: loading would leave {'it' if one else 'them'} at random or "
                         "uninitialised values)")
        if unexpected:
            one = len(unexpected) == 1
            held = f", in {_where(keys, unexpected)}" if len(files) > 1 else ""
            parts.append(f"{_tensors(len(unexpected))} of the weights {'has' if one else 'have'} no place in the model "
                         f"({_few(unexpected)}{held}: loading would drop {'it' if one else 'them'})")
        raise BackboneError(f"{what}: the weights in {where} do not match the model: {'; '.join(parts)}; {fix}")
    bad = sorted(k for k, t in state.items()
                 if k in keys and (t.is_floating_point() or t.is_complex()) and t.numel() and not bool(finite(t).all()))
    if bad:
        raise BackboneError(f"{what}: {_tensors(len(bad))} loaded from {_where(keys, bad)} {'holds' if len(bad) == 1 else 'hold'} "
                            f"NaN or infinite values ({_few(bad)}); the file is corrupt or the run that saved it "
                            "diverged: use an earlier checkpoint, or write the weights again")
