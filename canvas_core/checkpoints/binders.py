"""The identity binders' configuration in a canvas checkpoint header.

Two binders built from different ``IdentitySpec`` s can hold tensors of the same names and shapes
(``binding_fn="cross_attention"`` vs ``"slot_attention"``, ``mode="persistent"`` vs
``"tracklet"``), so the tensors alone cannot tell that a file belongs to another program. The
header entry ``identity_binders`` records, per module holding identity binders (named as the
plain model has it) and per region, ``binding_fn``, ``mode``, ``slot_capacity`` and
``birth_death``; loading refuses a model whose binders differ. A file without the entry
(written before it existed) is not checked.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from torch import nn

from canvas_core.checkpoints.tensors import header_entry
from canvas_core.errors import CheckpointError

__all__ = ["BINDERS", "binder_configs", "saved_binder_configs", "check_binder_configs"]

BINDERS = "identity_binders"
_FIELDS = ("binding_fn", "mode", "slot_capacity", "birth_death")


def binder_configs(model: nn.Module) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """``{module name as the plain model has it: {region: config}}`` of every module of ``model``
    holding identity binders (a ``specs`` mapping of ``IdentitySpec`` s, as ``IdentityBinders``)."""
    from canvas_core.program.identity import IdentitySpec
    from canvas_core.runtime.compiled_names import plain_names

    found: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for own, module in model.named_modules():
        specs = getattr(module, "specs", None)
        if isinstance(specs, Mapping) and specs and all(isinstance(s, IdentitySpec) for s in specs.values()):
            found[own] = {str(r): {f: getattr(s, f) for f in _FIELDS} for r, s in specs.items()}
    return {plain: found[own] for own, plain in plain_names(model, found).items()}


def saved_binder_configs(p: str, header: Mapping[str, str]) -> Optional[Dict[str, Dict[str, Dict[str, Any]]]]:
    """The header's binder configurations, None for a file without the entry; a malformed entry
    is a corrupt header."""
    return header_entry(p, header, BINDERS, lambda saved: isinstance(saved, dict) and all(
        isinstance(regions, dict) and all(isinstance(c, dict) and set(c) == set(_FIELDS) for c in regions.values())
        for regions in saved.values()), f"module name -> region -> {list(_FIELDS)}")


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], where: str) -> List[str]:
    out = []
    for region in sorted(set(old) | set(new)):
        if region not in new:
            out.append(f"{where} region {region!r}: only in the file")
        elif region not in old:
            out.append(f"{where} region {region!r}: only in the model")
        else:
            out += [f"{where} region {region!r}: {f} {old[region][f]!r} in the file, {new[region][f]!r} in the model"
                    for f in _FIELDS if old[region][f] != new[region][f]]
    return out


def check_binder_configs(model: nn.Module, saved: Optional[Mapping[str, Any]], p: str) -> None:
    """Refuse a file whose identity binders were built with another configuration than the
    model's (other binder, mode, slot count or gates), naming each difference."""
    if saved is None:
        return
    current = binder_configs(model)
    diffs: List[str] = []
    for path in sorted(set(saved) | set(current)):
        diffs += _differences(saved.get(path, {}), current.get(path, {}), f"identity binders {path or '<model>'!r}")
    if diffs:
        raise CheckpointError(
            f"canvas checkpoint {p!r} was saved with other identity binders than the model's: "
            + "; ".join(diffs[:8]) + ". Build the model from the program it was saved with (the saved binders: "
            f"read_canvas_checkpoint_header(path)[{BINDERS!r}]). Nothing was loaded")
