"""State dicts of ``SpatiotemporalCanvas`` in canvas-engineering's key layout, so checkpoints move
both ways.

canvas-core keeps the modality embeddings as ``r0, r1, ...`` (layout order), the family/carrier
table as ``family_carrier`` and computes the sinusoidal table instead of storing it.  The hook
below rewrites the saved dict to canvas-engineering's keys: ``modality_embeddings.<name>`` (the
region name with ``.``, ``[`` and ``]`` replaced as canvas-engineering does),
``family_carrier_embedding.*`` and the table ``pos_enc.pe`` (same values as the computed one),
so ``canvas_engineering.SpatiotemporalCanvas(...).load_state_dict(ours.state_dict())`` works;
loading maps those keys back (``SpatiotemporalCanvas._load_from_state_dict``).  When two region
names would sanitize to the same key, the ``r<k>`` keys are kept for those regions.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict

__all__ = ["sanitized_region_key", "canvas_engineering_keys"]


def sanitized_region_key(name: str) -> str:
    """The key canvas-engineering gives a region's modality embedding."""
    return name.replace(".", "__").replace("[", "_").replace("]", "_")


def canvas_engineering_keys(module: Any, state_dict: Dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """``state_dict`` hook of ``SpatiotemporalCanvas``: rename its entries in place (see above)."""
    names = list(module.names)
    keys = [sanitized_region_key(n) for n in names]
    clash = {k for k, c in Counter(keys).items() if c > 1}
    for k, key in enumerate(keys):
        old = f"{prefix}modality_embeddings.r{k}"
        if old in state_dict and key not in clash and key != f"r{k}":
            state_dict[f"{prefix}modality_embeddings.{key}"] = state_dict.pop(old)
    for key in [k for k in state_dict if k.startswith(prefix + "family_carrier.")]:
        state_dict[prefix + "family_carrier_embedding." + key[len(prefix + "family_carrier."):]] = state_dict.pop(key)
    layout = module.layout
    pe = module.pos_enc(max(1, layout.T), tuple(max(1, s) for s in layout.spatial_shape))
    state_dict[prefix + "pos_enc.pe"] = pe.detach().clone()
