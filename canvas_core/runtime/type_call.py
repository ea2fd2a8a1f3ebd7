"""How the runtime calls an attention type: the one calling contract, in one place.

Every part of canvas-core that runs an attention type's module -- ``CanvasAttention`` /
``AttentionDispatcher``, the backbone processors and the conformance kit
``canvas_core.testing.check_attention_type`` -- goes through :func:`call_attention_type`, and
checks a freshly built module with :func:`check_attention_module` before it is used.

The contract (stated for users in ``docs/plugins.md``, "The attention-type contract", and for the
runtime in ``docs/design.md``, "One attention semantics"): for each query, a type reads exactly
the keys its connections link, and nothing else.

* the module is an ``nn.Module`` whose ``forward`` accepts ``(queries, keys, values)``
  positionally, ``(B, Nq, D), (B, Nk, D), (B, Nk, D) -> (B, Nq, D)``;
* **exact-mask types** declare ``key_mask_exact = True`` (class or instance attribute) and accept
  ``key_mask`` (by name, or through ``**kwargs``): the runtime may call them ONCE with every query
  of the type, the union of their keys and a bool ``key_mask`` of shape ``(Nq, Nk)`` (True = this
  query may read this key); output row i must depend only on the keys row i allows (the
  conformance kit probes it) and be 0 for a row with none.  canvas-core's own exact types (whose
  rows are known to equal a call with the query's own key set alone) are run per key set instead,
  with ``key_mask=None`` (every key of the set), whenever that reads at most half the pairs;
* **key-blind types** declare ``reads_keys = False`` as well (``none``): their output provably
  does not depend on the keys or values (nor on ``key_mask``).  The runtime then leaves a NaN or
  inf key alone: the masked call's guard (:func:`call_exact_masked`), which sets every row linking
  a non-finite key to NaN, would give such a type NaN rows that the call with each query's own
  key set does not give.  Declare it only when no output depends on a key: the guard is what
  keeps a non-finite key away from the queries that do not link it;
* **every other type** (the default; everything that compresses or scans: perceiver, linear
  attention, rwkv, hyena, mamba, and a plugin that declares nothing) is called **per key set**:
  the runtime groups the queries by identical key set (in a plan, by key set and query block:
  ``runtime/key_sets.py``) and stacks all key sets of equal shape
  ``(Nq_g, Nk_g)`` along the batch dimension, ONE call per distinct shape:
  ``forward(q (B*G, Nq_g, D), k (B*G, Nk_g, D), v (B*G, Nk_g, D)) -> (B*G, Nq_g, D)``, no mask
  (``key_mask=None`` only when the forward requires the name).  Rows are independent sequences;
  within a row queries and keys keep their order (canonical position order in canvas layers and
  backbones: a scan is causal along it).  A query with no key gets zeros and is never passed.

The output must be a floating tensor of exactly the expected shape on the inputs' device with the
queries' dtype (under autocast another float dtype is cast back); anything else raises
:class:`~canvas_core.errors.AttentionContractError` naming the type and its provider, instead of
broadcasting silently.  Anything that cannot be called (a plain function, a ``forward`` that needs
more positional arguments, one that takes fewer than three) is refused by
:func:`check_attention_module`; ``runtime/type_probe.py`` probes a plugin type at build time (a tiny call,
then a capped sample of the real call shapes).
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional, Tuple

from canvas_core.errors import CanvasError, ShapeError, UnavailableError

__all__ = [
    "MASKED", "UNMASKED", "EXACT_ATTR", "SELF_GATED_ATTR", "READS_KEYS_ATTR", "calling_convention", "mask_is_exact",
    "reads_keys", "STRIDED_ATTR", "takes_strided_inputs",
    "runs_per_key_set", "is_builtin_module", "check_attention_module", "call_attention_type", "call_exact_masked",
    "key_set_groups",
    "check_type_output", "run_key_set_buckets", "run_flat_buckets", "call_per_key_set", "stack_by_shape",
]

#: ``forward(queries, keys, values, key_mask=...)`` can take a mask (signature only).
MASKED = "key_mask"
#: ``forward(queries, keys, values)``: no mask in the signature.
UNMASKED = "per_key_set"
#: the attribute by which a module declares that it honours ``key_mask`` exactly.
EXACT_ATTR = "key_mask_exact"
#: the attribute by which a module declares that its own learnable gate makes it 0 at init.
SELF_GATED_ATTR = "self_gated"
#: the attribute by which a module declares (``False``) that its output ignores keys and values.
READS_KEYS_ATTR = "reads_keys"
#: the attribute by which one of canvas-core's own modules declares (``True``) that it reads
#: strided views of the layer's input as cheaply as contiguous copies (its first products take
#: any batch stride), so a bucket read by slices is handed over without ``.contiguous()``
STRIDED_ATTR = "takes_strided_inputs"

_FIX = ("give the module's forward the signature forward(queries, keys, values, key_mask=None) "
        "(key_mask: bool (Nq, Nk), True where a query may read a key), or "
        "forward(queries, keys, values) for a type that reads every key it is given")

# forward function -> (convention or None, signature text, key_mask required by name)
_CONVENTION_CACHE: Dict[Any, Tuple[Optional[str], str, bool]] = {}


def _forward_of(module: Any) -> Any:
    inst = getattr(module, "__dict__", {})
    if "forward" in inst:  # an instance-level override
        return inst["forward"], None
    fwd = getattr(type(module), "forward", None)
    return getattr(module, "forward", None), fwd


def _inspect(forward: Any) -> Tuple[Optional[str], str, bool]:
    """(convention or None when it cannot be called as (q, k, v), signature text, needs key_mask=)."""
    try:
        sig = inspect.signature(forward)
    except (TypeError, ValueError):
        return MASKED, "(...)", False  # a builtin / C forward: trust the documented contract
    text = str(sig)
    try:
        sig.bind(object(), object(), object())
    except TypeError:
        try:  # key_mask required by name: still callable, always given a mask (None allowed)
            sig.bind(object(), object(), object(), key_mask=None)
        except TypeError:
            return None, text, False
        return MASKED, text, True
    try:
        sig.bind(object(), object(), object(), key_mask=None)
    except TypeError:
        return UNMASKED, text, False
    return MASKED, text, False


def mask_is_exact(module: Any) -> bool:
    """Whether ``module`` declares ``key_mask_exact = True`` (and its forward takes ``key_mask``)."""
    return getattr(module, EXACT_ATTR, False) is True and calling_convention(module) == MASKED


def reads_keys(module: Any) -> bool:
    """False only when ``module`` declares ``reads_keys = False`` (its output ignores keys and values)."""
    return getattr(module, READS_KEYS_ATTR, True) is not False


def is_builtin_module(module: Any) -> bool:
    """True for canvas-core's own attention types (tested by its own suite)."""
    return type(module).__module__.startswith("canvas_core.")


def takes_strided_inputs(module: Any) -> bool:
    """True for one of canvas-core's own modules declaring :data:`STRIDED_ATTR`; a plugin always
    gets contiguous inputs (``docs/plugins.md`` promises nothing about strides, so none is given)."""
    return is_builtin_module(module) and getattr(module, STRIDED_ATTR, False) is True


def runs_per_key_set(module: Any) -> bool:
    """True when the runtime calls ``module`` once per shape of key set (no mask); False when it
    makes one masked call over the union of the keys (an exact-mask type)."""
    return not mask_is_exact(module)


def calling_convention(module: Any) -> Optional[str]:
    """:data:`MASKED` (the forward can take ``key_mask``), :data:`UNMASKED`, or None when
    ``module`` cannot be called as a type.  Which call the runtime makes: :func:`runs_per_key_set`."""
    return _signature_info(module)[0]


def _signature_info(module: Any) -> Tuple[Optional[str], str, bool]:
    bound, fn = _forward_of(module)
    if bound is None:
        return None, "(no forward)", False
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
    conv, text, _ = _signature_info(module)
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
        from canvas_core.errors import ShapeError

        raise ShapeError(f"key_set_groups needs a 2-d (Nq, Nk) mask, got shape {tuple(key_mask.shape)}; pass one "
                         "sample's mask (a 3-d mask: one call per sample)")
    nq, nk = key_mask.shape
    if nq == 0 or nk == 0:
        return []
    rows, inverse = torch.unique(key_mask.to(torch.bool), dim=0, return_inverse=True)
    first = torch.full((rows.shape[0],), nq, dtype=torch.long, device=inverse.device)
    first = first.scatter_reduce(0, inverse, torch.arange(nq, device=inverse.device), reduce="amin")
    out = []
    for g in torch.argsort(first).tolist():  # first appearance order: independent of unique()'s
        keys = torch.nonzero(rows[g], as_tuple=False).flatten()
        if keys.numel() == 0:
            continue
        queries = torch.nonzero(inverse == g, as_tuple=False).flatten()
        out.append((queries, keys))
    return out


def stack_by_shape(groups: List[Tuple[Any, Any]]) -> List[Tuple[Any, Any]]:
    """``[(query_index (nq,), key_index (nk,)), ...]`` -> ``[(Q (G, nq), K (G, nk)), ...]``: the key
    sets of equal shape stacked, one entry per distinct ``(nq, nk)`` in order of first appearance."""
    import torch

    by: Dict[Tuple[int, int], List[Tuple[Any, Any]]] = {}
    for qi, ki in groups:
        by.setdefault((int(qi.numel()), int(ki.numel())), []).append((qi, ki))
    return [(torch.stack([q for q, _ in gs]), torch.stack([k for _, k in gs])) for gs in by.values()]


def _label(name: Any, module: Any) -> str:
    if isinstance(name, str):
        return name
    return getattr(module, "type_name", None) or type(module).__name__


def check_type_output(out: Any, queries: Any, name: Any = None, module: Any = None,
                      nq: Optional[int] = None) -> Any:
    """``out`` if it is what a type must return for ``queries`` ``(B, Nq, D)``: a floating tensor of
    shape ``(B, Nq, D)`` on the queries' device with their dtype (another float dtype is cast back
    under autocast only); else :class:`~canvas_core.errors.AttentionContractError` naming the type."""
    import torch

    from canvas_core.errors import AttentionContractError

    want = (queries.shape[0], queries.shape[1] if nq is None else nq, queries.shape[2])
    problem = None
    if not isinstance(out, torch.Tensor):
        problem = f"returned {type(out).__name__}, not a tensor"
    elif tuple(out.shape) != want:
        problem = f"returned shape {tuple(out.shape)} for queries of shape {tuple(queries.shape)}; expected (B, Nq, D) = {want}"
    elif out.device != queries.device:
        problem = f"returned a tensor on {out.device} for inputs on {queries.device}"
    elif not out.is_floating_point():
        problem = f"returned dtype {out.dtype}, not a floating-point tensor"
    elif out.dtype != queries.dtype:
        from canvas_core.attention._base import autocast_on

        if autocast_on(queries.device.type):
            return out.to(queries.dtype)
        problem = f"returned dtype {out.dtype} for {queries.dtype} inputs"
    if problem is None:
        return out
    label = _label(name, module)
    raise AttentionContractError(
        f"attention type {label!r} from {_provider(name if name is not None else type(module))}: its module "
        f"{type(module).__name__} {problem}; a type must return a tensor (B, Nq, D) with the queries' "
        "dtype and device (docs/plugins.md, 'The attention-type contract')")


def run_key_set_buckets(module: Any, queries: Any, keys: Any, values: Any, buckets: List[Tuple[Any, Any]],
                        name: Any = None) -> List[Tuple[Any, Any]]:
    """Run a per-key-set type: for each ``(Q (G, nq), K (G, nk))`` (indices into dim 1 of
    ``queries`` / ``keys`` and ``values``), ONE call on ``(B*G, nq, D), (B*G, nk, D), (B*G, nk, D)``.
    Returns ``[(Q.flatten() (G*nq,), out (B, G*nq, D)), ...]``."""
    flat = [(Q.reshape(-1), K.reshape(-1), int(Q.shape[0]), int(Q.shape[1]), int(K.shape[1])) for Q, K in buckets]
    outs = run_flat_buckets(module, queries, keys, values, flat, name)
    return [(qf, o) for (qf, _, _, _, _), o in zip(flat, outs)]


def run_flat_buckets(module: Any, queries: Any, keys: Any, values: Any, buckets: List[Tuple[Any, Any, int, int, int]],
                     name: Any = None) -> List[Any]:
    """:func:`run_key_set_buckets` on index vectors flattened once, when the plan was built:
    ``buckets`` holds ``(qf (G*nq,), kf (G*nk,), G, nq, nk)``, optionally followed by ``qkf``, the
    two already concatenated, and ``blocks``, the bucket's strided layout or None
    (``PlanRunner.flat_buckets``); returns the outputs ``[out (B, G*nq, D), ...]`` (rows in the
    order of ``qf``).  At run time this is one gather per index vector (slices instead when
    ``blocks`` is given and one tensor holds queries, keys and values: ``runtime/block_views.py``;
    left uncopied for a module declaring :data:`STRIDED_ATTR`, :func:`takes_strided_inputs`),
    one call per bucket and nothing else (no index reshapes, no masks built)."""
    B = queries.shape[0]
    needs_kw = _signature_info(module)[2]
    # written for masks: canvas-core's own exact types read "no mask" as "every key", which is
    # what an all-True mask says; anyone else's is given the all-True mask itself
    exact = mask_is_exact(module)
    ones_mask = exact and not is_builtin_module(module)
    res = []
    # one tensor read for both (batch 1): ONE gather, whose backward is one scatter into one
    # zero gradient instead of two; the query and key blocks are views of it
    shared = B == 1 and queries is keys
    views = takes_strided_inputs(module)
    for qf, kf, G, nq, nk, *qkf in buckets:
        blocks = qkf[1] if len(qkf) > 1 else None
        if blocks is not None and queries is keys and values is keys:
            from canvas_core.runtime.block_views import block_inputs

            q, k = block_inputs(queries, blocks, G, nq, nk, contiguous=not views)
        elif shared:
            import torch

            both = qkf[0] if qkf else torch.cat((qf, kf))
            q, k = queries.index_select(1, both).split([G * nq, G * nk], dim=1)
            q = q.reshape(B * G, nq, queries.shape[-1])  # split, not slices: its backward is one
            k = k.reshape(B * G, nk, keys.shape[-1])  # concatenation, no zero-filled gradients
        else:
            q = queries.index_select(1, qf).reshape(B * G, nq, queries.shape[-1])
            k = keys.index_select(1, kf).reshape(B * G, nk, keys.shape[-1])
        v = k if values is keys else values.index_select(1, kf).reshape(B * G, nk, values.shape[-1])
        if ones_mask:
            import torch

            o = run_type(module, name, q, k, v, key_mask=torch.ones(nq, nk, dtype=torch.bool, device=q.device))
        elif exact or needs_kw:
            o = run_type(module, name, q, k, v, key_mask=None)
        else:
            o = run_type(module, name, q, k, v)
        o = check_type_output(o, q, name, module)
        res.append(o.reshape(B, G * nq, o.shape[-1]))
    return res


def call_per_key_set(module: Any, q: Any, k: Any, v: Any, key_mask: Any, name: Any = None) -> Any:
    """``module`` called once per shape of key set of ``key_mask`` (None: one key set), the key
    sets of one shape stacked along the batch, without a mask; zeros for a query without keys."""
    import torch

    B, Nq, Nk = q.shape[0], q.shape[1], k.shape[1]
    whole = [(torch.arange(Nq, device=q.device)[None], torch.arange(Nk, device=k.device)[None])]
    if key_mask is None:
        if Nk == 0 or Nq == 0:
            return q.new_zeros(q.shape)
        return run_key_set_buckets(module, q, k, v, whole, name)[0][1]
    from canvas_core.attention.key_masks import normalize_key_mask  # no torch module imported at load

    # the reader every type shares: (B|1, Nq|1, Nk) bool, or a CanvasError naming the type
    mask = normalize_key_mask(_label(name, module), key_mask, B, Nq, Nk, q)[0].expand(-1, Nq, Nk)
    if mask.shape[0] == 1 or bool((mask == mask[:1]).all()):
        mask = mask[0]
    else:  # a per-sample mask (not used by the runtime): sample by sample
        return torch.cat([call_per_key_set(module, q[b:b + 1], k[b:b + 1], v[b:b + 1], mask[b], name)
                          for b in range(B)], dim=0)
    if Nq and Nk and bool(mask.all()):
        return run_key_set_buckets(module, q, k, v, whole, name)[0][1]
    groups = [(qi.to(q.device), ki.to(k.device)) for qi, ki in key_set_groups(mask)]
    if not groups:
        return q.new_zeros(q.shape)
    parts = run_key_set_buckets(module, q, k, v, stack_by_shape(groups), name)
    idx = torch.cat([i for i, _ in parts])
    o = torch.cat([p for _, p in parts], dim=1)
    return o.new_zeros((B, Nq, o.shape[-1])).index_copy(1, idx, o)


def call_attention_type(module: Any, queries: Any, keys: Any, values: Any, key_mask: Any = None,
                        name: Any = None) -> Any:
    """Run an attention type's module under the contract above.

    ``key_mask``: None (every query reads every key), or a mask as every type reads it
    (``canvas_core.extend.normalize_key_mask``): bool ``(Nq, Nk)`` (True = linked), integer (0
    blocks) or additive float (``-inf`` blocks), broadcastable to ``(B, Nq, Nk)``, on the queries'
    device; a complex, quantized or sparse one, or a float one holding NaN or ``+inf``, is refused
    with a :class:`~canvas_core.errors.CanvasError` naming the type.  An exact-mask type
    (:func:`mask_is_exact`) gets ``module(queries, keys, values, key_mask=key_mask)``; any other
    type one call per shape of key set, the key sets of that shape stacked along the batch
    (nothing is called for a query without keys: zeros).  ``name``: the type's name, for errors.
    """
    if runs_per_key_set(module):
        return call_per_key_set(module, queries, keys, values, key_mask, name)
    return call_exact_masked(module, queries, keys, values, key_mask, name)


def run_type(module: Any, name: Any, *args: Any, **kwargs: Any) -> Any:
    """``module(*args, **kwargs)`` (under forward-mode AD with torch's math attention kernel: the
    fused CPU one has no forward derivative); a torch error raised under a ``torch.func``
    transform or forward-mode AD becomes an :class:`UnavailableError` naming the type
    (hand-written backwards have no functorch or forward-mode rules).  A plugin module built in
    another dtype or on another device than its inputs is refused with a ``ShapeError``
    (``runtime/type_dtypes.py``): the dtype before the call, the device when the call fails."""
    from canvas_core.runtime.func_transforms import forward_ad_active, forward_ad_math_sdpa, func_transformed
    from canvas_core.runtime.type_dtypes import device_problem, dtype_problem

    problem = dtype_problem(module, args[0]) if args else None
    if problem is not None:
        raise ShapeError(f"{_who(module, name)}: {problem}")
    try:
        with forward_ad_math_sdpa():
            return module(*args, **kwargs)
    except RuntimeError as exc:
        if isinstance(exc, CanvasError) or not args:
            raise
        problem = device_problem(module, args[0])
        if problem is not None:
            said = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise ShapeError(f"{_who(module, name)}: {problem} (torch: {type(exc).__name__}: {said})") from exc
        if func_transformed(args[0]) or forward_ad_active():
            raise _under_func_transform(module, name, exc) from exc
        raise


def _who(module: Any, name: Any) -> str:
    source = _provider(name if name is not None else type(module))
    return f"attention type {_label(name, module)!r} (module {type(module).__name__} from {source})"


def _under_func_transform(module: Any, name: Any, exc: BaseException) -> UnavailableError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return UnavailableError(
        f"attention type {name or type(module).__name__!r} ({type(module).__name__}) cannot run under a "
        f"torch.func transform (vmap / grad / jacrev / jvp) or forward-mode AD; torch says: {first[:120]}. Types with a "
        "hand-written backward (rwkv, hyena, linear_attention, mixture, mamba, ...) have no torch.func "
        "rules: use torch.autograd.grad or torch.autograd.functional.jacobian, which work with every "
        "type (the softmax-family and module types also run under torch.func)")


def call_exact_masked(module: Any, queries: Any, keys: Any, values: Any, key_mask: Any, name: Any = None) -> Any:
    """``module(queries, keys, values, key_mask=key_mask)`` for an exact-mask type, with a
    non-finite key kept to the queries that link it.

    The union of several key sets goes to one call, and a module that weighs the keys a query
    may not read by 0 still multiplies them (``0 * nan`` is NaN: a NaN in frame 3 would reach
    queries of frames 0-2).  So the keys and values holding a NaN or inf are zeroed before the
    call, and exactly the rows whose ``key_mask`` row links one of them are set to NaN after it,
    which is what the call with each query's own key set gives (``runtime/finite_guard.py``).
    A type declaring ``reads_keys = False`` is called as it is: its rows hold no key's value."""
    import torch

    from canvas_core.runtime.finite_guard import non_finite_keys, reads_bad, zero_bad_keys

    if key_mask is not None and not is_builtin_module(module):  # canvas-core's own read it themselves
        from canvas_core.attention.key_masks import check_key_mask

        # handed on unchanged, but refused as the shared reader refuses it (attribute checks only
        # for the runtime's own bool masks: no host sync)
        check_key_mask(_label(name, module), key_mask, queries)
    if not reads_keys(module):
        return check_type_output(run_type(module, name, queries, keys, values, key_mask=key_mask), queries,
                                 name, module)
    bad = non_finite_keys(keys, values)  # (B, Nk), or None when all are finite (checked cheaply)
    if bad is not None:
        zk, zv = zero_bad_keys(keys, values, bad)
        keys, values = zk, (zk if values is keys else zv)  # keys that are the values stay one tensor
    out = check_type_output(run_type(module, name, queries, keys, values, key_mask=key_mask), queries, name, module)
    if bad is None:
        return out
    if key_mask is None:
        reads = bad.any(dim=-1, keepdim=True).expand(-1, out.shape[1])
    else:
        from canvas_core.attention._base import linked_keys

        linked = linked_keys(key_mask)
        B, Nq = out.shape[0], out.shape[1]
        if linked.dim() == 2 and linked.shape[0] == B and linked.shape[0] not in (Nq, 1):
            linked = linked[:, None]  # a (B, Nk) mask, read as the types read it
        elif linked.dim() == 1:  # (Nk,): the same keys for every query (2-d stays 2-d: no batch copy)
            linked = linked[None]
        wd = torch.float64 if out.dtype == torch.float64 else torch.float32
        reads = reads_bad(linked, bad.unsqueeze(1), wd).squeeze(1)  # (B, 1, Nk) against (B|1, Nq|1, Nk)
    return out.masked_fill(reads.unsqueeze(-1), float("nan"))
