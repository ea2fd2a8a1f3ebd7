"""Probes of an attention type by value, beside the gradient probes of ``type_probe``.

* :func:`value_leak`: perturb the inputs of some query rows and keys (or of one sample), call the
  type again and name an output row (or sample) that changed although nothing it may read did.
  A read behind ``.detach()`` or ``torch.no_grad()`` has no gradient, so only this probe sees it
  (a batch statistic of detached values, rows of a stacked call swapped and added back).
* :func:`kept_state`: the same inputs again after a call with other inputs must give the same
  output (a type keeping state between calls carries one connection's keys into another's queries);
  :func:`calls_differ`: two identical calls must agree (a call counter, a clock).  Both read one
  set of five calls, :func:`repeated_calls`; :func:`steady_tolerance` is the slack of the second.
* :func:`state_from_inputs`: in training mode, where a module may change from call to call on its
  own, only a state kept from a call's inputs is a leak: two copies called first with different
  inputs must agree on the next call.
* :func:`rows_leak` / :func:`query_leak`: one stacked call (or one key set) with one key set's
  inputs (or one query) changed; the other rows (queries) must keep their output.
* :func:`mixed_dtypes_explained`: a raw failure of a module with parameters of mixed dtypes, said so.
* :func:`probe_failure`: the ``CanvasError`` for a plugin type raising a non-canvas exception
  during a build-time probe, naming the connection, the type and its provider; an allocator's
  out-of-memory error is said as such, with the bytes asked for and the probe's input shapes.
"""

from __future__ import annotations

import contextlib
import copy
import random
import re
import sys
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import torch

from canvas_core.errors import AttentionContractError, CanvasError

__all__ = ["value_leak", "probe_failure", "out_of_memory", "value_tolerance", "rng_fork", "reseeded",
           "repeated_calls", "kept_state", "calls_differ", "state_from_inputs", "steady_tolerance", "spread",
           "redrawn", "rows_leak", "query_leak", "KEEPS_STATE", "UNSTEADY", "mixed_dtypes_explained"]

#: what a type keeping state between calls does wrong (the build's refusal and the kit's failure)
KEEPS_STATE = ("it keeps state between calls, so one connection's keys reach another's queries (the calls of "
               "one forward share the module); a type must be a function of its inputs and parameters: "
               "keep no tensor from one call for the next")
#: what a type whose identical calls differ does wrong (the build's refusal and the kit's failure)
UNSTEADY = ("the output depends on something besides its inputs and parameters (a call counter, a clock, "
            "os.urandom or Python's random module), so no check by value can hold it to its key sets")

_LABELS = ("queries", "keys", "values")


def value_tolerance(out: Any) -> float:
    """The largest change of an output that counts as unchanged: a few ulps of its dtype, relative to
    its largest magnitude.  Rows computed from unchanged inputs come out bit for bit the same on CPU;
    the slack only covers kernels that reduce in another order for another batch content."""
    scale = float(out.detach().abs().max()) + 1.0 if out.numel() else 1.0
    return 4 * torch.finfo(out.dtype).eps * scale


def _changed(a: Any, b: Any, tol: float) -> Any:
    """``(B, Nq)`` bool: the rows of ``b`` that differ from ``a`` by more than ``tol`` (NaN differs)."""
    diff = (a.detach() - b.detach()).abs().nan_to_num(float("inf"))
    return diff.amax(-1) > tol


def _rows(ix: Sequence[int]) -> str:
    ix = sorted(ix)
    if len(ix) > 2 and ix == list(range(ix[0], ix[-1] + 1)):
        return f"{ix[0]}..{ix[-1]}"
    return ", ".join(str(i) for i in ix)


def value_leak(run: Callable[[Any, Any, Any], Any], q: Any, k: Any, v: Any, mask: Any,
               queries: Sequence[int] = (), keys: Sequence[int] = (), sample: Optional[int] = None,
               base: Any = None, seed: int = 97, graded: bool = True) -> Optional[str]:
    """What changed that must not have, or None.  ``run(q, k, v)``: the type as the runtime calls it
    with ``mask`` ``(Nq, Nk)`` bool; ``q``, ``k``, ``v`` ``(B, N, D)``.  New values are drawn for
    query rows ``queries`` and key / value rows ``keys`` (in every sample, or only in ``sample``);
    then every row outside ``queries`` that links none of ``keys`` must keep its output, and with
    ``sample`` given every other sample must keep all of it.  ``base``: ``run(q, k, v)`` when the
    caller has it (else one more call).  A changed row is only reported when a second call on the
    original inputs reproduces ``base`` (a type whose output varies between identical calls is not
    blamed for reading what it did not).  Calls run without gradients.  ``graded``: a gradient
    probe of the same call found nothing (the message then says the read has no gradient)."""
    with torch.no_grad():
        if base is None:
            base = run(q, k, v)
        gen = torch.Generator().manual_seed(seed)
        q2, k2, v2 = (t.detach().clone() for t in (q, k, v))
        b = slice(None) if sample is None else slice(sample, sample + 1)
        for t, ix in ((q2, queries), (k2, keys), (v2, keys)):
            if len(ix):
                new = 3 * torch.randn(tuple(t[b][:, list(ix)].shape), generator=gen)
                t[b, list(ix)] = new.to(device=t.device, dtype=t.dtype)
        other = run(q2, k2, v2)
        tol = value_tolerance(base)
        changed = _changed(base, other, tol)
        found = _first_change(changed, mask, queries, keys, sample)
        if found is None:
            return None
        if _changed(base, run(q, k, v), tol).any():  # not reproducible: nothing can be attributed
            return None
    row, what = found
    diff = float((base[row] - other[row]).abs().nan_to_num(float("inf")).max())
    why = ("though no gradient connects them (a read behind .detach() or torch.no_grad(), e.g. a statistic "
           "over every row of the call)" if graded else "though it may not read them (checked by value only at "
           "this size: e.g. a statistic over every row of the call, with or without a gradient)")
    return f"{what} changed (by {diff:.3g}) when only {_what_changed(queries, keys, sample)} changed, {why}"


def redrawn(gen: Any, *ts: Any) -> tuple:
    """New values of the shapes, dtypes and devices of ``ts`` (drawn on the CPU from ``gen``)."""
    return tuple((3 * torch.randn(tuple(t.shape), generator=gen)).to(device=t.device, dtype=t.dtype) for t in ts)


def repeated_calls(run: Callable[[Any, Any, Any], Any], q: Any, k: Any, v: Any, seed: int = 61) -> tuple:
    """``(a, again, after)``, five calls without gradients: ``run(q, k, v)`` once to settle, twice
    more (``a``, ``again``: a type keeping state from its previous call now gives the same output
    twice), then once with other inputs of the same shapes and ``after`` with ``(q, k, v)`` again.
    ``run`` should reseed any randomness it draws (:func:`reseeded`).  What :func:`kept_state` and
    :func:`calls_differ` read, so one set of calls serves both."""
    with torch.no_grad():
        run(q, k, v)
        a, again = run(q, k, v), run(q, k, v)
        run(*redrawn(torch.Generator().manual_seed(seed), q, k, v))
        return a, again, run(q, k, v)


def spread(a: Any, b: Any) -> float:
    """The largest ``|a - b|``, NaN counted as infinite (0 for empty tensors)."""
    return float((a - b).abs().nan_to_num(float("inf")).max()) if a.numel() else 0.0


def kept_state(calls: tuple) -> Optional[str]:
    """Whether the output for the same inputs changed after one call with other inputs, read off
    :func:`repeated_calls`'s ``(a, again, after)``.  The spread of the two identical calls (kernels
    reducing in another order) sets how much more counts as a change.  None: no change (or a type
    whose identical calls already differ a lot, left to :func:`calls_differ`)."""
    a, again, after = calls
    diff = spread(a, after)
    if diff <= max(value_tolerance(a), 8 * spread(a, again)):
        return None
    return (f"its output for the same inputs changed (by {diff:.3g}) after one call with other inputs: "
            f"{KEEPS_STATE}")


def state_from_inputs(module: Any, run_of: Callable[[Any], Callable[[Any, Any, Any], Any]], q: Any, k: Any, v: Any,
                      seed: int = 71) -> Optional[str]:
    """Whether what ``module`` keeps from one call depends on that call's inputs: two copies of the
    module are taken; the module and one copy are called once with the same other inputs, the
    second copy with different ones, then each once more with ``(q, k, v)``.  The second copy's
    output must agree with the module's within the spread between the module and the first copy
    (randomness drawn outside torch's generators).  ``run_of(m)`` gives the (reseeded) call of
    module ``m``.  State that evolves on its own (a call counter, a power iteration, an average of
    the weights, a private random generator) gives all three the same and is no leak: only a kept
    input carries one connection's keys to another's queries.  None: no dependence found (or a
    module that cannot be copied)."""
    try:
        same, other = copy.deepcopy(module), copy.deepcopy(module)
    except Exception:
        return None
    gen = torch.Generator().manual_seed(seed)
    first, second = redrawn(gen, q, k, v), redrawn(gen, q, k, v)
    outs = []
    with torch.no_grad():
        for m, before in ((module, first), (same, first), (other, second)):
            run = run_of(m)
            run(*before)
            outs.append(run(q, k, v))
    a, control, b = outs
    diff = spread(a, b) if a.shape == b.shape else float("inf")
    if diff <= max(value_tolerance(a), 8 * spread(a, control)):
        return None
    return (f"its output for the same inputs depends on the inputs of the call before (by {diff:.3g}, the module "
            f"copied and each copy called first with other inputs): {KEEPS_STATE}")

def steady_tolerance(dtype: Any) -> float:
    """The relative and absolute slack of two outputs that should agree (``allclose``): 1e-5 in
    float32 / float64, 2e-2 in half precision (the conformance kit's tolerance)."""
    return 1e-5 if dtype in (torch.float32, torch.float64) else 2e-2


def calls_differ(a: Any, again: Any) -> Optional[float]:
    """The largest difference of two outputs of identical calls when they do not agree within
    :func:`steady_tolerance` (NaN differs), else None.  The slack covers kernels that reduce in
    another order from call to call (atomic adds on a GPU), never a counter or a clock."""
    tol = steady_tolerance(a.dtype)
    if a.shape == again.shape and bool(torch.allclose(a, again, rtol=tol, atol=tol)):
        return None
    return spread(a, again) if a.shape == again.shape else float("inf")


def rows_leak(run: Callable[[Any, Any, Any], Any], q: Any, k: Any, v: Any, nq: int, nk: int,
              seed: int = 67) -> Optional[str]:
    """One stacked call ``run(q, k, v)`` of ``(B, G*nq, D)`` queries and ``(B, G*nk, D)`` keys /
    values (``G`` key sets of ``nq`` x ``nk``, each sample's sets in order), again with only sample
    0's first key set redrawn: every other row of the call must keep its output.  Rows are compared
    directly (no ``(Nq, Nk)`` mask is made: ``G`` may be in the thousands)."""
    with torch.no_grad():
        base = run(q, k, v)
        q2, k2, v2 = (t.detach().clone() for t in (q, k, v))
        gen = torch.Generator().manual_seed(seed)
        q2[:1, :nq], k2[:1, :nk], v2[:1, :nk] = redrawn(gen, q2[:1, :nq], k2[:1, :nk], v2[:1, :nk])
        tol = value_tolerance(base)
        changed = _changed(base, run(q2, k2, v2), tol)
        changed[0, :nq] = False  # the changed key set's own queries may move
        if not changed.any() or _changed(base, run(q, k, v), tol).any():
            return None  # nothing moved, or not reproducible (nothing can be attributed)
    b, i = (int(x) for x in changed.nonzero()[0])
    whose = f"sample {b}'s output (query {i})" if b else f"query {i}'s output (key set {i // nq}, sample 0)"
    return (f"{whose} changed when only sample 0's first key set changed, {q.shape[0] * (q.shape[1] // nq)} "
            "rows stacked in one call (a statistic over the rows of the call)")


def query_leak(run: Callable[[Any, Any, Any], Any], q: Any, k: Any, v: Any, query: int = 1,
               seed: int = 71) -> Optional[str]:
    """By value: only query row ``query`` gets new values (in every sample); every other query row
    must keep its output.  ``"query i's output depends on query j ..."`` or None."""
    with torch.no_grad():
        base = run(q, k, v)
        q2 = q.detach().clone()
        q2[:, query] = redrawn(torch.Generator().manual_seed(seed), q2[:, query])[0]
        tol = value_tolerance(base)
        moved = _changed(base, run(q2, k, v), tol)
        moved[:, query] = False
        if not moved.any() or _changed(base, run(q, k, v), tol).any():
            return None
    b, i = (int(x) for x in moved.nonzero()[0])
    return (f"query {i}'s output depends on query {query} (another query's input: only query {query} changed"
            f"{f', sample {b} moved' if b else ''})")


@contextlib.contextmanager
def rng_fork(device: Any) -> Iterator[None]:
    """``torch.random.fork_rng`` over the CPU generator and, on an accelerator, ``device``'s, and
    the states of Python's ``random`` and (when loaded) numpy's global generator: every random state
    as it was afterwards (reproducible builds; :func:`reseeded` seeds them all)."""
    kind = getattr(torch, device.type, None) if device.type not in ("cpu", "meta") else None
    if kind is None or not hasattr(kind, "current_device"):
        fork = torch.random.fork_rng(devices=[])
    else:
        index = device.index if device.index is not None else kind.current_device()
        fork = torch.random.fork_rng(devices=[index], device_type=device.type)
    np = sys.modules.get("numpy")
    py_state, np_state = random.getstate(), (np.random.get_state() if np is not None else None)
    with fork:
        try:
            yield
        finally:
            random.setstate(py_state)
            if np_state is not None:
                np.random.set_state(np_state)


def reseeded(run: Callable[[Any, Any, Any], Any], device: Any, seed: int = 2029) -> Callable[[Any, Any, Any], Any]:
    """``run`` seeding the CPU generator, ``device``'s, Python's ``random`` and numpy's global one
    with ``seed`` before every call (inside :func:`rng_fork`): a type drawing randomness in forward
    (dropout in training mode, a layer skipped at random) draws the same for the base and the
    perturbed call, so only the inputs differ between them."""
    def call(q: Any, k: Any, v: Any) -> Any:
        torch.random.default_generator.manual_seed(seed)
        random.seed(seed)
        np = sys.modules.get("numpy")
        if np is not None:
            np.random.seed(seed)
        kind = getattr(torch, device.type, None) if device.type not in ("cpu", "meta") else None
        if kind is not None and hasattr(kind, "manual_seed") and hasattr(kind, "device"):
            with kind.device(device):
                kind.manual_seed(seed)  # this device's generator only
        return run(q, k, v)
    return call


def _what_changed(queries: Sequence[int], keys: Sequence[int], sample: Optional[int]) -> str:
    parts = [f"quer{'ies' if len(queries) > 1 else 'y'} {_rows(queries)}" if len(queries) else "",
             f"key{'s' if len(keys) > 1 else ''} {_rows(keys)}" if len(keys) else ""]
    what = " and ".join(p for p in parts if p) or "the inputs"
    return f"sample {sample}'s {what}" if sample is not None else f"the inputs of {what}"


def _first_change(changed: Any, mask: Any, queries: Sequence[int], keys: Sequence[int],
                  sample: Optional[int]) -> Optional[tuple]:
    """``((b, i), text)`` of the first output row that changed and may not have, or None."""
    B, Nq = changed.shape
    keyset = torch.zeros(mask.shape[1], dtype=torch.bool)
    keyset[list(keys)] = True
    for b in range(B):
        for i in range(Nq):
            if not bool(changed[b, i]):
                continue
            if sample is not None and b != sample:
                return (b, i), f"sample {b}'s output (query {i})"
            if i in queries or bool((mask[i].cpu() & keyset).any()):
                continue  # it reads what changed: allowed to move
            where = f"query {i}'s output" + (f" (sample {b})" if sample is not None or B > 1 else "")
            return (b, i), where
    return None


def out_of_memory(exc: BaseException) -> Optional[str]:
    """``"N bytes"`` (or torch's own size text) when ``exc`` is an allocator's out-of-memory error,
    else None."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    text = str(exc)
    if not (isinstance(exc, oom) or isinstance(exc, RuntimeError) and re.search(
            r"can(?:'|no)t allocate|out of memory|Tried to allocate", text, re.IGNORECASE)):
        return None
    got = re.search(r"allocate (\d+) bytes", text) or re.search(r"[Tt]ried to allocate ([\d.]+ [KMGTP]?i?B)", text)
    if got is None:
        return "more memory than this machine has"
    return f"{got.group(1)} bytes" if got.group(1).isdigit() else got.group(1)


def probe_failure(exc: BaseException, module: Any, fn: Any, where: str, when: str, shapes: Any) -> Exception:
    """The ``AttentionContractError`` for a type that raised ``exc`` (not a ``CanvasError``) during a
    build-time probe; ``when``: which probe, ``shapes``: its ``(queries, keys, values)`` shapes."""
    from canvas_core.runtime.type_call import _provider

    who = f"attention type {fn!r} ({type(module).__name__}) from {_provider(fn)}"
    shape = ", ".join(f"{label} {tuple(s)}" for label, s in zip(_LABELS, shapes))
    asked = out_of_memory(exc)
    if asked is not None:
        return AttentionContractError(
            f"{where}: {who}: its module tried to allocate {asked} on {when}, probe inputs of shape {shape}; "
            "this is the type's own allocation, not the layer's size: fix the type (or report it to its "
            "author) before building the layer")
    said = (str(exc).strip().splitlines() or [""])[0][:200]
    return AttentionContractError(
        f"{where}: {who} raised {type(exc).__name__} on {when}, probe inputs of shape {shape}: {said}; fix "
        "the type (or report it to its author); the traceback of its error is chained below")


@contextlib.contextmanager
def mixed_dtypes_explained(module: Any, fn: Any, where: Optional[str] = None) -> Iterator[None]:
    """Calls of ``module`` inside: a raw failure (not a ``CanvasError``) of a module whose floating
    parameters have more than one dtype is re-raised as ``AttentionContractError`` naming ``where``
    (the connection), the type and two of the parameters.  The probes call a type with inputs of
    one dtype; a module that copes with mixed parameters (casting inside) is not refused."""
    try:
        yield
    except CanvasError:
        raise
    except Exception as exc:
        first: Dict[Any, str] = {}
        for name, p in module.named_parameters():
            if p.is_floating_point():
                first.setdefault(p.dtype, name)
        if len(first) < 2:
            raise
        (d0, n0), (d1, n1) = list(first.items())[:2]
        who = f"attention type {fn!r} ({type(module).__name__})"
        raise AttentionContractError(
            f"{where or who}: {who} failed ({type(exc).__name__}: {str(exc)[:200]}) with floating parameters "
            f"of mixed dtypes ({n0!r} is {d0}, {n1!r} is {d1}); canvas layers call a type with inputs of one "
            f"dtype: create every parameter in one dtype (torch.get_default_dtype(), as nn.Linear does), cast "
            f"inside forward, or convert the module with module.to({d1})") from exc
