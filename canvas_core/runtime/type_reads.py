"""The gradient probes of an attention type's reads: which inputs does each output row depend on?

* :func:`dependencies`: per query row of one sample, the queries and keys / values its output has a
  nonzero gradient on (against fixed random weights); :func:`first_leak` names the first one outside
  a ``(Nq, Nk)`` bool mask (another query, an unlinked key).
* :func:`batch_leak`: the same across the samples of the batch.
* A NaN / inf output or gradient on finite inputs is refused as such (``AttentionContractError``):
  it would read as a dependency on everything.

Used by the build probe (``type_probe``, which re-exports them) and the conformance kit.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from canvas_core.errors import AttentionContractError
from canvas_core.runtime.type_in_place import said_in_place

__all__ = ["dependencies", "first_leak", "batch_leak", "key_runs"]

_LABELS = ("queries", "keys", "values")


def dependencies(run: Callable[[Any, Any, Any], Any], q: Any, k: Any, v: Any,
                 batch_item: int = 0, rows: Optional[Sequence[int]] = None) -> List[Tuple[set, set]]:
    """For each query row i of ``batch_item``: (queries it depends on, keys or values it depends
    on), read off the gradient of ``out[batch_item, i]`` against fixed random weights.  ``rows``:
    only these rows are asked (one backward each); the others read as depending on nothing."""
    with said_in_place():
        return _dependencies(run, q, k, v, batch_item, rows)


def _dependencies(run: Callable[[Any, Any, Any], Any], q: Any, k: Any, v: Any,
                  batch_item: int, rows: Optional[Sequence[int]] = None) -> List[Tuple[set, set]]:
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = run(q, k, v)
    gen = torch.Generator().manual_seed(7)
    r = torch.randn(tuple(out.shape[1:]), generator=gen).to(device=out.device, dtype=out.dtype)
    deps = []
    asked = set(range(q.shape[1]) if rows is None else rows)
    for i in range(q.shape[1]):
        if not out.requires_grad or i not in asked:
            deps.append((set(), set()))
            continue
        grads = torch.autograd.grad((out[batch_item, i] * r[i]).sum(), (q, k, v), retain_graph=True,
                                    allow_unused=True)
        _finite_gradients(out, grads, f"query {i}'s output" + (f" (sample {batch_item})" if batch_item else ""))
        nz = [None if g is None else (g[batch_item] != 0).any(-1) for g in grads]
        dq = set() if nz[0] is None else {int(j) for j in torch.nonzero(nz[0]).flatten()}
        deps.append((dq, {int(j) for g in nz[1:] if g is not None for j in torch.nonzero(g).flatten()}))
    return deps


def _finite_gradients(out: Any, grads: Sequence[Any], whose: str) -> None:
    """Refuse a NaN / inf output or gradient on finite inputs: a NaN gradient is nonzero everywhere,
    so it would read as a dependency on every input (an invented leak) instead of what it is."""
    if not bool(torch.isfinite(out.detach()).all()):
        raise AttentionContractError(
            "the attention type returns NaN or infinite values on finite inputs (random ones: the probe of "
            "its reads cannot tell what it depends on); fix its arithmetic (a division by zero, the log of 0, "
            "an overflow)")
    for label, g in zip(_LABELS, grads):
        if g is not None and not bool(torch.isfinite(g).all()):
            raise AttentionContractError(
                f"the attention type has a NaN or infinite gradient of {whose} w.r.t. the {label} although "
                "its inputs and output are finite (the probe of its reads cannot tell what it depends "
                "on, and training would diverge); fix its backward arithmetic (sqrt or pow of 0, the "
                "log of 0, a division by zero)")


def batch_leak(run: Callable[[Any, Any, Any], Any], q: Any, k: Any, v: Any) -> Optional[str]:
    """Whether some sample's output depends (by gradient) on another sample's queries, keys or
    values: one backward per output sample, every other sample's input rows read off.  None when
    the samples are independent (or the batch has one sample, or the output needs no gradient)."""
    with said_in_place():
        return _batch_leak(run, q, k, v)


def _batch_leak(run: Callable[[Any, Any, Any], Any], q: Any, k: Any, v: Any) -> Optional[str]:
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = run(q, k, v)
    n = q.shape[0]
    if n < 2 or not isinstance(out, torch.Tensor) or not out.requires_grad:
        return None
    gen = torch.Generator().manual_seed(11)
    r = torch.randn(tuple(out.shape), generator=gen).to(device=out.device, dtype=out.dtype)
    for j in range(n):
        grads = torch.autograd.grad((out[j] * r[j]).sum(), (q, k, v), retain_graph=True, allow_unused=True)
        _finite_gradients(out, grads, f"sample {j}'s output")
        for label, g in zip(_LABELS, grads):
            read = [] if g is None else [b for b in range(n) if b != j and bool((g[b] != 0).any())]
            if read:
                return (f"sample {j}'s output depends on sample {read[0]}'s {label} (samples of a batch "
                        "must stay independent)")
    return None


def key_runs(ix: Any, min_run: int) -> List[str]:
    """Sorted keys as text, each run of at least ``min_run`` consecutive keys as ``a..b``: the
    short form of a key set in a message (also the conformance kit's)."""
    runs: List[List[int]] = []
    for j in sorted(ix):
        if runs and j == runs[-1][-1] + 1:
            runs[-1].append(j)
        else:
            runs.append([j])
    return [part for r in runs for part in ([f"{r[0]}..{r[-1]}"] if len(r) >= min_run else map(str, r))]


def _listing(ix: set) -> str:
    """``[0, 1, 2]``; a long list with its runs of consecutive keys shortened, ``[0..57, 90]``."""
    return str(sorted(ix)) if len(ix) <= 8 else "[" + ", ".join(key_runs(ix, 3)) + "]"


def first_leak(deps: List[Tuple[set, set]], mask: Any) -> Optional[str]:
    """The first dependency outside ``mask`` ``(Nq, Nk)`` bool (another query, or an unlinked key)."""
    for i, (dq, dk) in enumerate(deps):
        if not dq and not dk:
            continue
        allowed = {int(j) for j in mask[i].nonzero().flatten()}
        extra_q = sorted(dq - {i})
        if extra_q:
            return f"query {i}'s output depends on query {extra_q[0]} (another query's input)"
        extra_k = sorted(dk - allowed)
        if extra_k:
            where = f"its key set {_listing(allowed)}" if allowed else "it has no key"
            return (f"query {i}'s output depends on key {extra_k[0]}, which {where} excludes "
                    "(a leak across key sets)")
    return None
