"""Which region each positional modality-embedding key of a canvas checkpoint belongs to.

A ``SpatiotemporalCanvas`` saves a region's modality embedding under its sanitized name, but
regions whose sanitized names coincide (``a.b`` and ``a__b``) keep ``modality_embeddings.r<k>``,
``k`` the region's index in the layout (``runtime/ce_state.py``).  Those keys depend on the region
order, which schema equality and ``schema_hash`` ignore, so the file records the owner of every
such key (header entry ``region_keys``: ``{tensor name: region name}``) and the loader maps each
saved key onto the key the loading model gives that region.  A file without the entry (written
before it existed) is read in the region order of its saved schema; where that order gives a key
to another region than the model does, the load is refused rather than guessed.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence

from torch import nn

from canvas_core.checkpoints.tensors import header_entry
from canvas_core.errors import CheckpointError
from canvas_core.runtime.ce_state import region_state_keys, sanitized_region_key

__all__ = ["REGION_KEYS", "region_key_owners", "saved_region_keys", "map_region_keys", "header_record",
           "region_key_entry", "remap_file_names"]

#: canvas-checkpoint header entry: JSON ``{tensor name: region name}`` of the positional keys
REGION_KEYS = "region_keys"

_BASE = "modality_embeddings."


def _canvases(model: nn.Module) -> List[Any]:
    """``(module name, region names in layout order)`` of every canvas whose modality-embedding
    keys are positional for some region (two region names sanitize alike)."""
    from canvas_core.runtime.canvas import SpatiotemporalCanvas

    found = []
    for name, m in model.named_modules():
        if isinstance(m, SpatiotemporalCanvas) and m.modality_embeddings is not None and m._keyed_by_index():
            found.append((name, list(m.names)))
    return found


def _owners(prefix: str, names: Sequence[str]) -> Dict[str, str]:
    """``{state name: region}`` of every modality embedding of a canvas at ``prefix`` (``names`` in
    the layout order the keys were made with)."""
    return {f"{prefix}{_BASE}{key}": name for key, name in zip(region_state_keys(names), names)}


def region_key_owners(model: nn.Module, own_to_plain: Mapping[str, str]) -> Dict[str, str]:
    """``{plain tensor name: region name}`` for every modality embedding of each canvas in
    ``model`` that has positional keys (empty for canvases whose keys are all region names).
    ``own_to_plain``: the model's state names -> the names written to a file."""
    found: Dict[str, str] = {}
    for name, names in _canvases(model):
        for own, region in _owners(f"{name}." if name else "", names).items():
            if own in own_to_plain:
                found[own_to_plain[own]] = region
    return found


def saved_region_keys(p: str, header: Mapping[str, str]) -> Optional[Dict[str, str]]:
    """The header's ``region_keys`` entry, None for a file without it; malformed: a corrupt header."""
    return header_entry(p, header, REGION_KEYS, lambda saved: isinstance(saved, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in saved.items()), "tensor name -> region name")


def region_key_entry(p: str, header: Mapping[str, str]) -> Dict[str, Any]:
    """``{"region_keys": the decoded record}`` for a header returned to the caller (empty without one)."""
    saved = saved_region_keys(p, header)
    return {REGION_KEYS: saved} if saved is not None else {}


def header_record(owners: Mapping[str, str]) -> Dict[str, str]:
    """The header entries to write for ``owners`` (:func:`region_key_owners`): none when empty."""
    return {REGION_KEYS: json.dumps(dict(owners), sort_keys=True)} if owners else {}


def _prefix(tensor_name: str) -> str:
    return tensor_name[:tensor_name.rindex(_BASE)]


def map_region_keys(model_owners: Mapping[str, str], saved: Optional[Mapping[str, str]],
                    saved_names: Sequence[str], p: str) -> Dict[str, str]:
    """``{name in the file: the model's plain name}`` for the positional keys whose owner differs.

    ``model_owners``: :func:`region_key_owners` of the loading model; ``saved``: the file's record
    (None for an older file: read in ``saved_names``, the saved schema's region order, it must give
    every region the model's key, else :class:`CheckpointError`; nothing to map then)."""
    by_region = {(_prefix(k), region): k for k, region in model_owners.items()}
    if saved is None:
        for prefix in sorted({_prefix(k) for k in model_owners}):
            _refuse_other_order(prefix, _owners(prefix, saved_names), by_region, p)
        return {}
    mapping: Dict[str, str] = {}
    for key, region in saved.items():
        target = by_region.get((_prefix(key), region)) if _BASE in key else None
        if target is None:
            continue  # no canvas with a positional key for it here: the names are compared as they are
        if target != key:
            mapping[key] = target
    return mapping


def _refuse_other_order(prefix: str, guess: Mapping[str, str], by_region: Mapping[Any, str], p: str) -> None:
    """Refuse an older file (no record) whose keys, read in its saved schema's region order, are not
    the keys the model gives the same regions: the order the file was written in is not known for sure."""
    for key, region in guess.items():
        ours = by_region.get((prefix, region), key)
        if ours != key:
            mates = sorted(r for r in guess.values() if r != region
                           and sanitized_region_key(r) == sanitized_region_key(region))
            raise CheckpointError(
                f"canvas checkpoint {p!r} keeps the embedding of region {region!r} as {key!r} (its index in the "
                f"layout, as its state key is shared with region(s) {mates}), and the model's canvas "
                f"{prefix[:-1] or '<model>'!r} orders the regions otherwise (it keeps {region!r} as {ours!r}). The "
                "file was written before canvas-core recorded which region each such key is, so it is not loaded "
                "by guess: build the canvas with the saved schema's region order (read_canvas_checkpoint_header"
                "(path)['schema'].layout), load the file there, and save it again. Nothing was loaded")


def remap_file_names(model: nn.Module, file_to_own: Mapping[str, str], in_file: Mapping[str, str],
                     header: Mapping[str, str], saved_names: Sequence[str], p: str) -> Dict[str, str]:
    """``in_file`` (``{plain name: name in the file}``) with each positional modality-embedding key
    moved to the key the model gives the region it was saved for (:func:`map_region_keys`).
    ``file_to_own``: the model's plain names -> its own state names."""
    owners = region_key_owners(model, {own: plain for plain, own in file_to_own.items()})
    mapping = map_region_keys(owners, saved_region_keys(p, header), saved_names, p) if owners else {}
    moved = {target: in_file[key] for key, target in mapping.items() if key in in_file}
    return {**{k: v for k, v in in_file.items() if k not in mapping}, **moved}
