"""State dicts of ``SpatiotemporalCanvas`` in canvas-engineering's key layout, so checkpoints move
both ways.

canvas-core keeps the modality embeddings as ``r0, r1, ...`` (layout order), the family/carrier
table as ``family_carrier`` and computes the sinusoidal table instead of storing it.  The hook
below rewrites the saved dict to canvas-engineering's keys: ``modality_embeddings.<name>`` (the
region name with ``.``, ``[`` and ``]`` replaced as canvas-engineering does),
``family_carrier_embedding.*`` and the table ``pos_enc.pe`` (same values as the computed one),
so ``canvas_engineering.SpatiotemporalCanvas(...).load_state_dict(ours.state_dict())`` works;
loading maps those keys back (``SpatiotemporalCanvas._load_from_state_dict``).  The renaming is
one-to-one: when two regions would get the same key (two names that sanitize alike, or a name such
as ``r1`` equal to the ``r<k>`` key another region keeps), those regions keep their ``r<k>`` keys
(:func:`region_state_keys`), so no region's embedding overwrites another's.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List, Sequence

from canvas_core.errors import CheckpointError


class CanvasStateMismatch(CheckpointError, RuntimeError):
    """A state dict of a canvas of another size; also a ``RuntimeError``, as torch's (and
    canvas-engineering's) size-mismatch error is."""

__all__ = [
    "sanitized_region_key", "region_state_keys", "rename_loaded_region_keys", "canvas_engineering_keys",
    "check_stored_table", "CanvasStateMismatch", "public_key", "public_load_keys",
]


def sanitized_region_key(name: str) -> str:
    """The key canvas-engineering gives a region's modality embedding."""
    return name.replace(".", "__").replace("[", "_").replace("]", "_")


def region_state_keys(names: Sequence[str]) -> List[str]:
    """The saved key of each region's modality embedding (``names`` in layout order): the
    sanitized name, except that regions whose keys would coincide keep ``r<k>``.  Always
    pairwise distinct."""
    keys = [sanitized_region_key(n) for n in names]
    while True:
        counts = Counter(keys)
        clash = [k for k, key in enumerate(keys) if counts[key] > 1 and key != f"r{k}"]
        if not clash:
            return keys
        for k in clash:  # each round reverts at least one region to its own r<k> key
            keys[k] = f"r{k}"


def rename_loaded_region_keys(names: Sequence[str], state_dict: Dict[str, Any], prefix: str) -> Dict[str, str]:
    """Map the saved modality-embedding keys of ``state_dict`` back to ``r<k>`` in place: keys of
    :func:`region_state_keys` (ours and canvas-engineering's), and ``r<k>`` kept as it is.
    Returns ``{internal key: the key it had in state_dict}`` for the keys renamed."""
    base = f"{prefix}modality_embeddings."
    to_internal = {key: f"r{k}" for k, key in enumerate(region_state_keys(names))}
    entries = {key[len(base):]: state_dict.pop(key) for key in [k for k in state_dict if k.startswith(base)]}
    renamed = {to_internal[sub]: value for sub, value in entries.items() if sub in to_internal}
    origin = {base + to_internal[sub]: base + sub for sub in entries if sub in to_internal and to_internal[sub] != sub}
    for sub, value in entries.items():  # older r<k> keys (and unknown ones, reported by strict loading)
        if sub not in to_internal:
            renamed.setdefault(sub, value)
    state_dict.update({base + sub: value for sub, value in renamed.items()})
    return origin


def public_key(names: Sequence[str], key: str, prefix: str) -> str:
    """The name ``state_dict()`` gives the entry a canvas module at ``prefix`` holds as ``key``
    (``modality_embeddings.r<k>`` -> the region's key, ``family_carrier.*`` ->
    ``family_carrier_embedding.*``); any other key as it is."""
    if not key.startswith(prefix):
        return key
    rest = key[len(prefix):]
    head, _, sub = rest.partition(".")
    if head == "modality_embeddings" and sub[:1] == "r" and sub[1:].isdigit() and int(sub[1:]) < len(names):
        return f"{prefix}modality_embeddings.{region_state_keys(names)[int(sub[1:])]}"
    if head == "family_carrier" and sub:
        return f"{prefix}family_carrier_embedding.{sub}"
    return key


def public_load_keys(module: Any, incompatible: Any) -> None:
    """``load_state_dict`` post hook of ``SpatiotemporalCanvas``: the missing and unexpected keys
    (and so strict loading's error) named as ``state_dict()`` and the given dict name them, not by
    the internal names ``_load_from_state_dict`` renamed them to (``module._loaded_as``: the
    module's prefix and ``{internal key: given key}``, recorded there)."""
    prefix, origin = module.__dict__.pop("_loaded_as", ("", {}))
    names = list(module.names)
    incompatible.missing_keys[:] = [public_key(names, k, prefix) for k in incompatible.missing_keys]
    incompatible.unexpected_keys[:] = [origin.get(k, k) for k in incompatible.unexpected_keys]


def canvas_engineering_keys(module: Any, state_dict: Dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """``state_dict`` hook of ``SpatiotemporalCanvas``: rename its entries in place (see above)."""
    keys = region_state_keys(list(module.names))
    old = {k: state_dict.pop(f"{prefix}modality_embeddings.r{k}") for k in range(len(keys))
           if f"{prefix}modality_embeddings.r{k}" in state_dict}
    for k, value in old.items():
        state_dict[f"{prefix}modality_embeddings.{keys[k]}"] = value
    for key in [k for k in state_dict if k.startswith(prefix + "family_carrier.")]:
        state_dict[prefix + "family_carrier_embedding." + key[len(prefix + "family_carrier."):]] = state_dict.pop(key)
    layout = module.layout
    pe = module.pos_enc(max(1, layout.T), tuple(max(1, s) for s in layout.spatial_shape))
    state_dict[prefix + "pos_enc.pe"] = pe.detach().clone()


def check_stored_table(module: Any, table: Any) -> None:
    """Refuse a stored ``pos_enc.pe`` table ``(T, *spatial, D)`` whose shape is not this canvas's:
    the state dict comes from a canvas of another size (canvas-engineering refuses it too, as a
    size mismatch of that buffer).  Raised before anything of ``module`` is loaded."""
    layout = module.layout
    want = (max(1, layout.T), *(max(1, s) for s in layout.spatial_shape), int(layout.d_model))
    got = tuple(getattr(table, "shape", ()))
    if got != want:
        raise CanvasStateMismatch(
            f"SpatiotemporalCanvas.load_state_dict: size mismatch for pos_enc.pe: the state dict is of "
            f"a canvas (T, *spatial, d_model) = {got}, this canvas is {want}; load it into a canvas "
            "built from the same layout (save_canvas_checkpoint / load_canvas_checkpoint check the "
            "whole schema)"
        )
