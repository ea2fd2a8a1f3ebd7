"""How the runtime calls an attention type: the one calling contract, in one place.

Every part of canvas-core that runs an attention type's module -- ``CanvasAttention`` /
``AttentionDispatcher``, the backbone processors and the conformance kit
``canvas_core.testing.check_attention_type`` -- goes through :func:`call_attention_type`, and
checks a freshly built module with :func:`check_attention_module` before it is used.

The contract (stated for users in ``docs/plugins.md``, "The attention-type contract"):

* the module is an ``nn.Module`` whose ``forward`` accepts ``(queries, keys, values)``
  positionally, ``(B, Nq, D), (B, Nk, D), (B, Nk, D) -> (B, Nq, D)``;
* **masked types** -- ``forward`` also accepts ``key_mask`` (by name, or through ``**kwargs``):
  the runtime calls it once with every query of the type and the union of their keys, and a bool
  ``key_mask`` of shape ``(Nq, Nk)`` (True = this query may read this key); the module must then
  ignore masked keys and return zeros for a query with no allowed key;
* **unmasked types** -- ``forward(queries, keys, values)`` only (canvas-engineering's protocol):
  the runtime groups the queries by their key set and calls the module once per group with
  exactly that group's keys, so the result is exact without a mask; a query with no key gets
  zeros and the module is not called for it.

Anything else (a plain function, a ``forward`` that needs more positional arguments, one that
takes fewer than three) is refused by :func:`check_attention_module` with an
:class:`~canvas_core.errors.AttentionContractError` naming the type, its provider and the fix.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional, Tuple

__all__ = [
    "MASKED", "UNMASKED", "calling_convention", "check_attention_module", "call_attention_type",
    "key_set_groups",
]

#: ``forward(queries, keys, values, key_mask=...)``: one call with a ``(Nq, Nk)`` bool mask.
MASKED = "key_mask"
#: ``forward(queries, keys, values)``: one call per group of queries sharing the same keys.
UNMASKED = "per_key_set"

_FIX = ("give the module's forward the signature forward(queries, keys, values, key_mask=None) "
        "(key_mask: bool (Nq, Nk), True where a query may read a key), or "
        "forward(queries, keys, values) for a type that reads every key it is given")

_CONVENTION_CACHE: Dict[Any, Tuple[Optional[str], str]] = {}


def _forward_of(module: Any) -> Any:
    inst = getattr(module, "__dict__", {})
    if "forward" in inst:  # an instance-level override
        return inst["forward"], None
    fwd = getattr(type(module), "forward", None)
    return getattr(module, "forward", None), fwd


def _inspect(forward: Any) -> Tuple[Optional[str], str]:
    """(convention or None when it cannot be called as (q, k, v), signature text)."""
    try:
        sig = inspect.signature(forward)
    except (TypeError, ValueError):
        return MASKED, "(...)"  # a builtin / C forward: trust the documented contract
    text = str(sig)
    try:
        sig.bind(object(), object(), object())
    except TypeError:
        try:  # key_mask required by name: still callable, always given a mask (None allowed)
            sig.bind(object(), object(), object(), key_mask=None)
        except TypeError:
            return None, text
        return MASKED, text
    try:
        sig.bind(object(), object(), object(), key_mask=None)
    except TypeError:
        return UNMASKED, text
    return MASKED, text


def calling_convention(module: Any) -> Optional[str]:
    """:data:`MASKED`, :data:`UNMASKED`, or None when ``module`` cannot be called as a type."""
    return _signature_info(module)[0]


def _signature_info(module: Any) -> Tuple[Optional[str], str]:
    bound, fn = _forward_of(module)
    if bound is None:
        return None, "(no forward)"
    if fn is None:
        return _inspect(bound)
    hit = _CONVENTION_CACHE.get(fn)
    if hit is None:
        hit = _CONVENTION_CACHE[fn] = _inspect(bound)
    return hit


def _provider(fn: Any) -> str:
    if not isinstance(fn, str):
        return getattr(fn, "__module__", None) or "an in-process factory"
    try:
        from canvas_core.plugins import get_attention_spec

        return get_attention_spec(fn).describe_provider()
    except Exception:  # not registered (a custom factory): nothing more precise to say
        return "an unregistered factory"


def check_attention_module(module: Any, fn: Any, provider: Optional[str] = None) -> str:
    """Refuse a module the runtime cannot call; return its calling convention.

    ``fn`` is the type's registered name (or the factory given instead); ``provider`` defaults to
    the providing distribution from the registry.  Raises
    :class:`~canvas_core.errors.AttentionContractError` naming the type, its provider and the fix.
    """
    from canvas_core.errors import AttentionContractError

    label = fn if isinstance(fn, str) else getattr(fn, "__name__", repr(fn))
    try:
        from torch import nn

        is_module = isinstance(module, nn.Module)
    except ImportError:  # pragma: no cover - the runtime always has torch
        is_module = True
    if not is_module:
        raise AttentionContractError(
            f"attention type {label!r} from {provider or _provider(fn)}: its factory returned "
            f"{type(module).__name__}, not a torch nn.Module, so a canvas layer cannot hold its "
            f"parameters; return an nn.Module and {_FIX}")
    conv, text = _signature_info(module)
    if conv is None:
        raise AttentionContractError(
            f"attention type {label!r} from {provider or _provider(fn)}: "
            f"{type(module).__name__}.forward{text} cannot be called as forward(queries, keys, values), "
            f"which is how canvas layers, backbone processors and check_attention_type call a type; {_FIX}")
    return conv


def key_set_groups(key_mask: Any) -> List[Tuple[Any, Any]]:
    """Group the rows of a bool ``(Nq, Nk)`` mask by identical key sets.

    Returns ``[(query_index, key_index), ...]`` (long tensors), one entry per distinct non-empty
    row, in order of first appearance; queries whose row is empty appear in no group.
    """
    import torch

    if key_mask.dim() != 2:
        raise ValueError(f"key_set_groups needs a 2-d (Nq, Nk) mask, got shape {tuple(key_mask.shape)}")
    nq, nk = key_mask.shape
    if nq == 0 or nk == 0:
        return []
    rows, inverse = torch.unique(key_mask.to(torch.bool), dim=0, return_inverse=True)
    out = []
    order = []
    seen = set()
    for g in inverse.tolist():  # first appearance order: deterministic, independent of unique()'s
        if g not in seen:
            seen.add(g)
            order.append(g)
    for g in order:
        keys = torch.nonzero(rows[g], as_tuple=False).flatten()
        if keys.numel() == 0:
            continue
        queries = torch.nonzero(inverse == g, as_tuple=False).flatten()
        out.append((queries, keys))
    return out


def _call_unmasked(module: Any, q: Any, k: Any, v: Any, key_mask: Any) -> Any:
    import torch

    B, Nq = q.shape[0], q.shape[1]
    if key_mask is None:
        if k.shape[1] == 0:
            return q.new_zeros(q.shape)
        return module(q, k, v)
    mask = key_mask.to(torch.bool)
    if mask.dim() == 3:  # a per-sample mask (not used by the runtime): sample by sample
        if mask.shape[0] == 1 or bool((mask == mask[:1]).all()):
            mask = mask[0]
        else:
            return torch.cat([_call_unmasked(module, q[b:b + 1], k[b:b + 1], v[b:b + 1], mask[b])
                              for b in range(B)], dim=0)
    if mask.dim() != 2 or tuple(mask.shape) != (Nq, k.shape[1]):
        from canvas_core.errors import ShapeError

        raise ShapeError(f"key_mask must have shape (Nq, Nk) = {(Nq, k.shape[1])}, got {tuple(key_mask.shape)}")
    if Nq and k.shape[1] and bool(mask.all()):
        return module(q, k, v)
    out = None
    for qi, ki in key_set_groups(mask):
        qi, ki = qi.to(q.device), ki.to(k.device)
        o = module(q.index_select(1, qi), k.index_select(1, ki), v.index_select(1, ki))
        if out is None:
            out = o.new_zeros((B, Nq) + tuple(o.shape[2:]))
        out = out.index_copy(1, qi, o)
    return q.new_zeros(q.shape) if out is None else out


def call_attention_type(module: Any, queries: Any, keys: Any, values: Any, key_mask: Any = None) -> Any:
    """Run an attention type's module under the contract above.

    ``key_mask``: None (every query reads every key) or bool ``(Nq, Nk)``.  A masked type gets
    ``module(queries, keys, values, key_mask=key_mask)``; an unmasked type is called once per
    group of queries with the same key set (nothing is called for a query without keys: zeros).
    """
    conv = calling_convention(module)
    if conv == UNMASKED:
        return _call_unmasked(module, queries, keys, values, key_mask)
    return module(queries, keys, values, key_mask=key_mask)
