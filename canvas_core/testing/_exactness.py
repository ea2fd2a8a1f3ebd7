"""Dependency exactness and trainability of an attention type (two properties of the kit).

* **dependency exactness**: called as the runtime calls it (``call_attention_type``) with a
  ``(Nq, Nk)`` mask of several key sets -- two of the same shape, so that a per-key-set type gets
  them stacked along the batch in one call -- output row i may depend (by gradient) on query i and
  on the keys / values row i links, and on nothing else: not on another query, not on a key of
  another key set.  A row with no key must not depend on any key.  The failure names the first
  offending dependency, e.g. "query 0 depends on key 4, which its key set {0, 1, 2} excludes".
  Then by value (a read behind ``.detach()`` has no gradient): each key set's queries and keys
  in turn, and the unlinked keys, get new values; every row reading none of them keeps its output
  (again at a larger size, :func:`large_side`: a branch taken only above a small size shows there,
  then with one query alone changed: the other queries keep their output), and once with
  ``ROW_SETS`` small key sets stacked (``batch * ROW_SETS`` rows in one call), only sample 0's
  first set changed.  The value checks are skipped for a type whose identical calls differ
  (``deterministic``).
* **key_mask respected**: a type whose ``forward`` accepts ``key_mask`` is also called directly,
  ``module(q, k, v, key_mask=mask)`` (how code outside the runtime calls it; a forward without
  ``key_mask`` is called as the runtime calls it, so the dependencies of **dependency exactness**
  are read again, not probed twice): under the same probe
  when it declares ``key_mask_exact = True`` (the runtime relies on it); otherwise (the runtime
  never hands it a mask) a key that the mask hides from every query must stay unread.
* **trainable**: with only the type's own parameters free, a few Adam steps toward a random
  target move the output (the runtime's call again).  Adam runs on float32 copies of half-precision
  parameters; a NaN / inf loss, gradient, parameter or output on the way fails with that reason.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from canvas_core.testing._report import Failed

__all__ = ["probe_mask", "describe_mask", "check_dependencies", "check_direct_mask", "check_trainable",
           "large_side", "large_batch_leak"]

NQ, NK = 6, 9
#: queries and keys per key set of the kit's larger value probes (at least; ``n_keys`` may raise it):
#: a type whose reads change only above some size passes every smaller probe
LARGE = 72
#: key sets of the stacked-rows value probe: ``batch * ROW_SETS`` rows in one call of a per-key-set type
ROW_SETS = 16


def large_side(s: Any) -> int:
    """Queries and keys per key set of the larger value probes: ``LARGE``, or more with ``n_keys``."""
    return max(LARGE, (s.n_keys - 3) // 2)


def probe_mask(torch: Any, device: Any, n_keys: int = NK) -> Any:
    """``(6, n_keys)`` bool.  With the default 9 keys: queries 0-1 read keys {0, 1, 2}, queries 2-3
    keys {3, 4, 5} (the same shape: stacked in one call), query 4 keys {1, 6, 7}, query 5 nothing;
    key 8 is linked to no query.  More keys: the two stacked sets get ``(n_keys - 3) // 2`` keys
    each, query 4 key 1 and the keys between them and the last one, still unlinked."""
    a = (n_keys - 3) // 2
    m = torch.zeros(NQ, n_keys, dtype=torch.bool)
    m[0:2, 0:a] = True
    m[2:4, a:2 * a] = True
    m[4, [1] + list(range(2 * a, n_keys - 1))] = True
    return m.to(device)


def _keys(ix: Any) -> str:
    """``{0,1,2}``; runs of more than three keys as ``a..b``."""
    from canvas_core.runtime.type_probe import key_runs

    parts = key_runs(ix, 4)
    return "{" + ",".join(parts) + "}" if parts else "nothing"


def describe_mask(mask: Any) -> str:
    """The probe's key sets as text, e.g. ``{0,1}->{0,1,2}, ..., {5}->nothing``."""
    groups: dict = {}
    for i in range(mask.shape[0]):
        groups.setdefault(tuple(int(j) for j in mask[i].nonzero().flatten()), []).append(i)
    return ", ".join(f"{_keys(qs)}->{_keys(ks)}" for ks, qs in groups.items())


def _qkv(s: Any, nq: int, nk: int) -> Tuple[Any, Any, Any]:
    return s.rand(s.B, nq, s.D), s.rand(s.B, nk, s.D), s.rand(s.B, nk, s.D)


def check_dependencies(s: Any) -> Optional[str]:
    """The runtime's call: no dependency outside the linked pattern (and some inside it)."""
    from canvas_core.runtime.type_probe import first_leak, gate_opening_dependencies
    from canvas_core.runtime.type_values import query_leak

    torch = s.torch
    mask = probe_mask(torch, s.device, s.n_keys)
    q, k, v = _qkv(s, NQ, s.n_keys)
    # a closed (zero) gate may hide reads that training opens
    deps, opened = gate_opening_dependencies(s.module, lambda a, b, c: s.call(a, b, c, mask), q, k, v)
    s.runtime_deps = deps  # 'key_mask respected' reads them for a forward without key_mask (the same call)
    how = " (its all-zero parameters, closed gates, set to random values)" if opened else ""
    leak = first_leak(deps, mask)
    if leak:
        raise Failed(f"called as the runtime calls it{how} with key sets {describe_mask(mask)}: {leak}")
    if not any(dk for _, dk in deps):
        return "the output depends on no key (nothing to check)"
    if s.unsteady:
        return f"{s.unsteady}; checked by gradient only"
    leak = _value_leak(s, mask, q, k, v)
    if leak:
        raise Failed(f"called as the runtime calls it with key sets {describe_mask(mask)}, by value: {leak}")
    n = large_side(s)  # by value again, larger: two key sets of n queries x n keys (stacked in one call)
    big = torch.block_diag(*[torch.ones(n, n, dtype=torch.bool)] * 2).to(s.device)
    run = lambda a, b, c: s.call(a, b, c, big)  # noqa: E731
    qkv = _qkv(s, 2 * n, 2 * n)
    # by value, one query alone changed: a type mixing the queries of a key set only above some size
    leak = _value_leak(s, big, *qkv, graded=False) or query_leak(run, *qkv, query=1)
    if leak:
        raise Failed(f"called as the runtime calls it with two key sets of {n} queries x {n} keys, by value: {leak}")
    return _rows_leak(s)


def _rows_leak(s: Any) -> None:
    """By value: ``ROW_SETS`` key sets of 2 queries x 3 keys, stacked by the runtime into one call
    of ``B * ROW_SETS`` rows; only sample 0's first key set changes, every other row keeps its output
    (a type mixing the rows of a call only when there are many of them fails here)."""
    from canvas_core.runtime.type_values import rows_leak

    torch = s.torch
    nq, nk = 2, 3
    mask = torch.block_diag(*[torch.ones(nq, nk, dtype=torch.bool)] * ROW_SETS).to(s.device)
    leak = rows_leak(lambda a, b, c: s.call(a, b, c, mask), *_qkv(s, ROW_SETS * nq, ROW_SETS * nk), nq, nk)
    if leak:
        raise Failed(f"called as the runtime calls it with {ROW_SETS} key sets of {nq} queries x {nk} keys at batch "
                     f"{s.B}, by value: {leak}")


def _value_leak(s: Any, mask: Any, q: Any, k: Any, v: Any, graded: bool = True) -> Optional[str]:
    """Each key set in turn (its queries and keys), then the keys no query links, get new values:
    every row that reads none of them must keep its output (a read with no gradient path, behind
    ``.detach()`` or ``torch.no_grad()``, shows only here)."""
    from canvas_core.runtime.type_call import key_set_groups
    from canvas_core.runtime.type_values import value_leak

    run = lambda a, b, c: s.call(a, b, c, mask)  # noqa: E731
    with s.torch.no_grad():
        base = run(q, k, v)
    changes = [([int(i) for i in qi], [int(j) for j in ki]) for qi, ki in key_set_groups(mask.cpu())]
    unlinked = [int(j) for j in (~mask.any(0)).nonzero().flatten()]
    for queries, keys in changes + ([([], unlinked)] if unlinked else []):
        leak = value_leak(run, q, k, v, mask, queries, keys, base=base, graded=graded)
        if leak:
            return leak
    return None


def large_batch_leak(s: Any) -> Optional[str]:
    """By value, at ``(B, n, n)`` (:func:`large_side`): sample 0 gets new inputs, every other sample
    must keep its output (None: it did, or the type's identical calls differ)."""
    from canvas_core.runtime.type_values import value_leak

    n = large_side(s)
    q, k, v = _qkv(s, n, n)
    mask = s.torch.ones(n, n, dtype=s.torch.bool, device=s.device)
    leak = value_leak(lambda a, b, c: s.call(a, b, c), q, k, v, mask, range(n), range(n), sample=0, graded=False)
    return leak and f"with {n} queries x {n} keys: {leak}"


def check_direct_mask(s: Any) -> Optional[str]:
    """A forward that takes ``key_mask``, called directly with it, honours it exactly."""
    from canvas_core.runtime.type_call import MASKED, calling_convention, mask_is_exact
    from canvas_core.runtime.type_probe import first_leak, gate_opening_dependencies

    torch = s.torch
    mask = probe_mask(torch, s.device, s.n_keys)
    q, k, v = _qkv(s, NQ, s.n_keys)

    def direct(a: Any, b: Any, c: Any) -> Any:
        torch.manual_seed(s.seed + 1)
        if calling_convention(s.module) != MASKED:  # no key_mask: as the runtime calls it
            return s.call(a, b, c, mask)
        return s.module(a, b, c, key_mask=mask)

    shared = calling_convention(s.module) != MASKED and getattr(s, "runtime_deps", None) is not None
    # a forward without key_mask is called as the runtime calls it: check_dependencies' probe, made once
    deps = s.runtime_deps if shared else gate_opening_dependencies(s.module, direct, q, k, v)[0]
    if mask_is_exact(s.module):
        leak = first_leak(deps, mask)
        if leak:
            raise Failed(f"it declares key_mask_exact = True but forward(q, k, v, key_mask=mask) does "
                         f"not honour key_mask: {leak}; honour it exactly, or drop the declaration (the "
                         "runtime then calls the type once per key set)")
        return None
    # not declared exact (the runtime never hands it a mask): keys no query may read stay unread
    union = mask.any(0)
    for i, (_, dk) in enumerate(deps):
        bad = sorted(j for j in dk if not bool(union[j]))
        if bad:
            raise Failed(f"forward(q, k, v, key_mask=mask) ignores key_mask: query {i}'s output depends "
                         f"on key {bad[0]}, which key_mask masks for every query; honour key_mask or "
                         "drop it from the signature")
    return None


def _master(torch: Any, p: Any) -> Any:
    """A float32 (or wider) leaf copy of parameter ``p`` for the optimiser: Adam's eps (1e-8) and
    squared gradients underflow in float16, which turns the update into 0/0 = NaN."""
    wide = p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32
    return p.detach().to(wide).clone().requires_grad_(True)


def _not_finite(torch: Any, named: List[Tuple[str, Any]]) -> Optional[str]:
    """The name of the first tensor in ``named`` holding NaN or inf, or None."""
    for label, t in named:
        if t is not None and not bool(torch.isfinite(t).all()):
            return label
    return None


def check_trainable(s: Any, steps: int = 5, lr: float = 1e-2) -> Optional[str]:
    """Only the type's parameters free: ``steps`` Adam steps toward a random target move the output.

    Adam updates float32 master copies of the parameters (written back into them, in their own
    dtype, before each call), so a half-precision type is judged by its own arithmetic and not by
    the optimiser's underflow.  A NaN / inf loss, gradient, parameter or output is its own failure."""
    torch = s.torch
    named = [(n, p) for n, p in s.module.named_parameters() if p.requires_grad and p.is_floating_point()]
    if not named:
        return "the type has no trainable parameters"
    params = [p for _, p in named]
    who = f"attention type {s.report.name!r}"
    mask = probe_mask(torch, s.device, s.n_keys)
    q, k, v = _qkv(s, NQ, s.n_keys)
    saved = [(p.detach().clone(), p.grad) for p in params]
    masters = [_master(torch, p) for p in params]
    how = f"{steps} Adam steps (lr {lr}) on its {len(params)} parameters toward a random target"
    try:
        with torch.no_grad():
            before = s.call(q, k, v, mask).clone()
        if _not_finite(torch, [("output", before)]):
            raise Failed(f"{who} outputs NaN or inf before any step (dtype {s.dtype}); it cannot be trained")
        target = s.rand(*before.shape)
        opt = torch.optim.Adam(masters, lr=lr)
        for step in range(1, steps + 1):
            with torch.no_grad():
                for p, m in zip(params, masters):
                    p.copy_(m)
                    p.grad = None
            out = s.call(q, k, v, mask)
            loss = (out.float() - target.float()).pow(2).mean()
            if not loss.requires_grad:
                raise Failed("the loss does not depend on the type's parameters (detached output?)")
            if _not_finite(torch, [("loss", loss)]):
                raise Failed(f"{who} outputs NaN or inf after Adam step {step - 1} of {steps} (lr {lr}, dtype "
                             f"{s.dtype}) toward a random target; keep its output finite while it trains")
            loss.backward()
            bad = _not_finite(torch, [(n, p.grad) for n, p in named])
            if bad:
                raise Failed(f"{who}: parameter {bad!r} gets a NaN or inf gradient at Adam step {step} (lr {lr}, "
                             f"dtype {s.dtype}); keep its gradients finite")
            for p, m in zip(params, masters):
                m.grad = None if p.grad is None else p.grad.detach().to(m.dtype)
            opt.step()
        with torch.no_grad():
            for p, m in zip(params, masters):
                p.copy_(m)
            bad = _not_finite(torch, [(n, p) for n, p in named])
            if bad:
                raise Failed(f"{who}: parameter {bad!r} holds NaN or inf after {how} (dtype {s.dtype})")
            after = s.call(q, k, v, mask)
        if _not_finite(torch, [("output", after)]):
            raise Failed(f"{who} outputs NaN or inf after {how} (dtype {s.dtype}); keep its output finite "
                         "while it trains")
        moved = float((after.float() - before.float()).abs().max())
    finally:
        with torch.no_grad():
            for p, (old, grad) in zip(params, saved):
                p.copy_(old)
                p.grad = grad
    if not moved > 0.0:
        raise Failed(f"{how} left the output unchanged: no parameter receives a gradient at "
                     "initialisation (a zero gate times another zero gate?)")
    s.report.details["trainable: output moved by"] = moved
    return None
