"""The ``gate/...`` series of :class:`~canvas_core.runtime.telemetry.Telemetry`: every parameter
whose own name contains ``gate``, read now.

A real gate gives its elements (up to :data:`MAX_ELEMENTS`) or its ``/mean`` and ``/absmax``.  A
complex gate keeps both parts, never just the real one: each element (or the mean) as ``/real``
and ``/imag``, and ``/absmax`` its largest magnitude ``|z|``.  A gate with no elements has no
value to log (a 0 would read as a closed gate, a NaN would poison a logger's plot): it gives no
series and is named by :func:`empty_gates` and in ``Telemetry.summary()`` instead.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import nn

from canvas_core.runtime.compiled_names import plain_name, wrapped_paths

__all__ = ["MAX_ELEMENTS", "gate_parameters", "gate_series", "empty_gates"]

#: gates with at most this many elements are listed one by one
MAX_ELEMENTS = 16


def gate_parameters(model: nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """``(name as the plain model has it, detached parameter)`` of every gate parameter of ``model``."""
    wrapped = wrapped_paths(model)
    return [(plain_name(name, wrapped), p.detach()) for name, p in model.named_parameters()
            if "gate" in name.rsplit(".", 1)[-1]]


def _parts(key: str, value: complex, is_complex: bool) -> Dict[str, float]:
    if not is_complex:
        return {key: float(value.real)}
    return {f"{key}/real": float(value.real), f"{key}/imag": float(value.imag)}


def gate_series(name: str, p: torch.Tensor) -> Dict[str, float]:
    """The series of the gate ``name`` holding ``p`` (any shape; nothing for an empty one)."""
    is_complex = p.is_complex()
    t = (p.to(torch.complex128) if is_complex else p.float()).flatten().cpu()
    n = t.numel()
    if n == 0:
        return {}
    out: Dict[str, float] = {}
    if n <= MAX_ELEMENTS:
        for i, v in enumerate(t.tolist()):
            out.update(_parts(f"gate/{name}/{i}" if n > 1 else f"gate/{name}", complex(v), is_complex))
        return out
    out.update(_parts(f"gate/{name}/mean", complex(t.mean().item()), is_complex))
    out[f"gate/{name}/absmax"] = float(t.abs().max())
    return out


def empty_gates(model: nn.Module) -> List[str]:
    """The names of the gate parameters of ``model`` with no elements (they give no series)."""
    return [name for name, p in gate_parameters(model) if p.numel() == 0]
