"""Where a type's module lives against where the canvas layer calling it computes.

A plugin factory may build its module in another dtype than the layer (``nn.Linear(...).double()``
inside it, a module made under another default dtype) or on another device (``meta``).  The build
probes call a module in its own dtype and skip ``meta``, so such a module passes the build, and at
the first forward torch would say only "mat1 and mat2 must have the same dtype" -- or, for a
module that casts its inputs to its own dtype, nothing while computing in another precision.

* :func:`dtype_problem`: before each call of a plugin module by
  :func:`~canvas_core.runtime.type_call.run_type` (which raises a ``ShapeError`` naming the type
  with it), what is wrong when none of the module's floating parameters has the inputs' dtype
  (outside autocast).  A walk over the module's parameters that stops at the
  first one of the inputs' dtype (about 3 us; not cached, so a parameter replaced after a call is
  seen); nothing for canvas-core's own types, nothing while ``torch.compile`` traces.  A module mixing dtypes (casting inside) is judged at build by
  ``type_probe.mixed_dtypes_explained``.
* :func:`device_problem`: after a raw torch error of such a call, what is wrong when none of the
  module's tensors is on the inputs' device (asked only on failure: an offloading hook may move
  the weights in just before the module runs).
* :func:`type_connections` / :func:`naming_connections`: a caller that runs a plan (the
  ``PlanRunner``) records, once per build, which connections each type runs, and prefixes a
  refusal with them, only when raising (``connection 'a' -> 'b' (fn 'x'): attention type 'x' ...``).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["dtype_problem", "device_problem", "type_connections", "naming_connections", "connection_label",
           "prefixed"]

#: connections a refusal names before "(and k more)"
_NAMED = 3

def _parameters(module: Any) -> list:
    try:
        return list(module.parameters())
    except Exception:  # not an nn.Module, or one torch cannot walk (unhashable): nothing to check
        return []


def _tensors(module: Any) -> list:
    try:
        return list(module.parameters()) + list(module.buffers())
    except Exception:  # not an nn.Module (check_attention_module refuses those at build)
        return []


def dtype_problem(module: Any, queries: Any) -> Optional[str]:
    """Why a plugin ``module`` cannot be called on ``queries`` (whose dtype is the one the layer
    computes in): none of its floating parameters has that dtype, outside autocast; both dtypes
    and the fix.  None when it can (a module without floating parameters, a builtin type)."""
    if type(module).__module__.startswith("canvas_core.") or not isinstance(queries, torch.Tensor) \
            or torch.compiler.is_compiling():
        return None
    want = queries.dtype
    floats = []
    for p in _parameters(module):  # no cache: a replaced parameter would go unseen (~3 us a call)
        if p.is_floating_point():
            if p.dtype == want:
                return None
            floats.append(p)
    if not floats:
        return None
    from canvas_core.attention._base import autocast_on

    if autocast_on(queries.device.type):
        return None  # autocast computes in its own dtypes
    have = floats[0].dtype
    kinds = ", ".join(dict.fromkeys(str(p.dtype) for p in floats))
    return (
        f"its floating parameters are {kinds} but the canvas layer calling it computes in "
        f"{want} (the dtype of its inputs), so torch would fail on the mismatch or the module compute in another "
        f"precision. Build the module in the layer's dtype (have the factory create its parameters in {want}, "
        f"e.g. with dtype=torch.get_default_dtype() as nn.Linear does by default), or convert the whole layer "
        f"after building it, layer.to({want}) (or layer.to({have}) and {have} inputs), which converts every "
        "module it holds; under torch.autocast inputs of another dtype are accepted")


def device_problem(module: Any, queries: Any) -> Optional[str]:
    """Why calling a plugin ``module`` on ``queries`` failed when it holds tensors and none of them
    is on the inputs' device (``meta`` included); else None (the failure is the module's own)."""
    if type(module).__module__.startswith("canvas_core.") or not isinstance(queries, torch.Tensor):
        return None
    held = _tensors(module)
    want = queries.device
    if not held or any(t.device == want for t in held):
        return None
    have = held[0].device
    if have.type == "meta":
        where = (f"its parameters are on the meta device (shapes only, no values) but its inputs are on {want}. "
                 f"Build the module with real weights on the layer's device (not under torch.device('meta')), "
                 f"or materialise this module alone, module.to_empty(device={str(want)!r}), and initialise its "
                 "weights (its reset_parameters()); to_empty of the whole layer would discard the layer's own weights")
    else:
        where = (f"its parameters are on {have} but its inputs are on {want}. Build the module on the layer's "
                 f"device, or move the whole layer after building it, layer.to({str(want)!r}), which moves every "
                 "module it holds")
    return where


def type_connections(plan: Any, fn: str) -> Tuple[Tuple[str, str], ...]:
    """``(src, dst)`` of the connections of fn type ``fn`` in ``plan``, distinct, in order: what a
    runner built from the plan records once, so that a refusal of ``fn``'s module can name them
    (empty when the plan does not say, e.g. a plan built by hand)."""
    try:
        conns = plan.topology.connections
        idx = np.unique(np.asarray(plan.groups[fn].conn)).tolist()  # one entry per rectangle
        return tuple(dict.fromkeys((str(conns[i].src), str(conns[i].dst)) for i in idx))
    except Exception:  # no topology, or one that no longer matches: the refusal names the type only
        return ()


def connection_label(items: Sequence[str], fn: str, plural: bool = True) -> str:
    """``"connections A, B, C (and 2 more) (fn 'x')"``: the prefix a refusal of fn type ``fn``'s
    module gets, from the connections already written out (``"'a' -> 'b'"``, or numbered at
    build); the first ``_NAMED`` are named.  ``plural=False`` keeps "connection" for any count."""
    named = ", ".join(items[:_NAMED])
    more = f" (and {len(items) - _NAMED} more)" if len(items) > _NAMED else ""
    noun = "connections" if plural and len(items) > 1 else "connection"
    return f"{noun} {named}{more} (fn {fn!r})"


def prefixed(exc: Exception, label: str) -> Exception:
    """``exc`` again, its message prefixed with ``label``: same class and attributes; ``exc``
    itself when its class cannot be built from one message."""
    try:
        new = type(exc)(f"{label}: {exc}")
    except Exception:
        return exc
    new.__dict__.update(exc.__dict__)
    return new


def naming_connections(exc: Exception, fn: str, pairs: Any) -> Exception:
    """``exc`` (a refusal of fn type ``fn``'s module) prefixed with the connections ``pairs``
    (``(src, dst)``, from :func:`type_connections`) that run the type (:func:`prefixed`); ``exc``
    itself when there is nothing to add."""
    if not pairs:
        return exc
    return prefixed(exc, connection_label([f"{src!r} -> {dst!r}" for src, dst in pairs], fn))
