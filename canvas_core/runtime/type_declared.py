"""Build-time checks of the two declarations the runtime trusts a plugin type to make truthfully.

``runtime/type_call.py`` acts on what a module declares about itself:

* ``self_gated = True``: its own learnable gate makes its output 0 at initialisation, so a backbone
  install (``looping/installed.py``, ``GatedTypeModule``) drops the block's zero gate for it.  A
  false one makes the grafted model differ from its backbone at initialisation;
* ``reads_keys = False``: its output depends on no key or value, so the runtime passes a NaN / inf
  key to it unguarded.  A false one lets a NaN key reach every query of the call, also the ones
  that do not link it (a leak by value across key sets).

The build probe (``type_probe``) calls :func:`refuse_false_declarations` on its own calls of a
plugin type; it raises ``AttentionContractError`` starting with the connection.

When the check of ``self_gated`` holds: the probe runs where a canvas layer or a backbone install
builds the module, right after its type's constructor made it (checkpoint weights are loaded
afterwards, onto the built model), so an output that is not exactly 0 there is a false declaration,
never the result of training.  A user's ``attention_factory`` may hand a canvas layer a module it
trained elsewhere: it is held to the declaration alike (the declaration says what the type outputs
as built); a canvas layer does not use it, so such a factory sets ``module.self_gated = False``.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from canvas_core.errors import AttentionContractError
from canvas_core.runtime.type_call import READS_KEYS_ATTR, SELF_GATED_ATTR, reads_keys
from canvas_core.runtime.type_values import redrawn, spread, value_tolerance

__all__ = ["declares_self_gated", "open_gate_claim", "poisoned", "refuse_open_gate", "key_blind_leak", "refuse_false_declarations",
           "SELF_GATED_FIX", "READS_KEYS_FIX"]

#: how to fix a false ``self_gated = True`` (the build's refusal and the kit's failure)
SELF_GATED_FIX = ("drop the self_gated declaration (a backbone install then puts the type behind a block gate "
                  "starting at 0), or zero-initialise the type's own gate so that its output is exactly 0 as "
                  "built (as gated does: tanh(alpha) * ..., alpha starting at 0); a module already trained (handed "
                  "to a canvas layer by an attention_factory) may set module.self_gated = False on the instance")
#: how to fix a false ``reads_keys = False`` (the build's refusal and the kit's failure)
READS_KEYS_FIX = ("drop the reads_keys = False declaration: the runtime then keeps a NaN or inf key away from the "
                  "queries that do not link it; declare it only for a type no output of which depends on a key "
                  "or value")


def declares_self_gated(module: Any) -> bool:
    """Whether ``module`` declares ``self_gated = True`` (exactly what the backbone install reads)."""
    return getattr(module, SELF_GATED_ATTR, False) is True


def open_gate_claim(out: Any) -> str:
    """What a false ``self_gated = True`` with output ``out`` (not all 0) shows: the build's refusal
    and the kit's failure both say it so."""
    peak = float(out.detach().abs().nan_to_num(float("inf")).max())
    return ("declares self_gated = True (its own gate makes it 0 at initialisation, so a backbone install drops "
            f"the block's zero gate for it), but as built it outputs max |output| {peak:.3g}")


def poisoned(k: Any, v: Any) -> Tuple[Any, Any]:
    """Copies of ``k`` and ``v`` ``(B, Nk, D)`` with key 0 NaN and the last value inf, as the runtime
    passes them unguarded to a type declaring ``reads_keys = False``."""
    bad_k, bad_v = k.detach().clone(), v.detach().clone()
    bad_k[:, 0], bad_v[:, -1] = float("nan"), float("inf")
    return bad_k, bad_v


def refuse_open_gate(module: Any, fn: Any, where: str, out: Any, when: str) -> None:
    """Raise when ``module`` declares ``self_gated = True`` but ``out``, its output on a probe call
    (``when``: which), is not exactly 0 everywhere."""
    if not declares_self_gated(module) or not isinstance(out, torch.Tensor) or not bool(out.detach().any()):
        return
    raise AttentionContractError(
        f"{where}: attention type {fn!r} ({type(module).__name__}) {open_gate_claim(out)} on {when}: installed in "
        f"a backbone it would change the backbone's output at initialisation. Fix: {SELF_GATED_FIX}")


def _key_gradient(deps: Sequence[Tuple[set, set]]) -> Optional[str]:
    for i, (_, dk) in enumerate(deps):
        if dk:
            return f"query {i}'s output has a gradient w.r.t. key {min(dk)} (numbered in the probe's call)"
    return None


def _moved(run: Callable[[Any, Any, Any], Any], q: Any, k: Any, v: Any, k2: Any, v2: Any, base: Any) -> Optional[float]:
    """How much ``run(q, k2, v2)`` differs from ``base`` (= ``run(q, k, v)``), NaN counted as inf; None
    when it does not, or when a second call on ``(q, k, v)`` does not reproduce ``base`` either."""
    with torch.no_grad():
        other = run(q, k2, v2)
        tol = value_tolerance(base)
        diff = spread(base, other)
        if diff <= tol or spread(base, run(q, k, v)) > tol:
            return None
    return diff


def key_blind_leak(run: Callable[[Any, Any, Any], Any], q: Any, k: Any, v: Any, base: Any,
                   deps: Sequence[Tuple[set, set]] = (), seed: int = 89) -> Optional[str]:
    """Why a type declaring ``reads_keys = False`` reads keys, or None.  ``run(q, k, v)``: the type as
    the runtime calls it, ``base`` its output on ``(q, k, v)`` ``(B, Nq, D)``; ``deps``: the gradient
    probe's dependencies (:func:`~canvas_core.runtime.type_reads.dependencies`) of its own small call
    (another batch than ``(q, k, v)``; gates possibly opened), read first at no cost.  Then by value, one call with every key and value redrawn (the output
    must not move) and, when it holds, one with key 0 NaN and the last value inf (as the runtime
    passes them to such a type: the output must not move either)."""
    found = _key_gradient(deps)
    if found:
        return found
    k2, v2 = redrawn(torch.Generator().manual_seed(seed), k, v)
    diff = _moved(run, q, k, v, k2, v2, base)
    if diff is not None:
        return f"its output changed (by {diff:.3g}) when the probe redrew every key and value"
    if not k.shape[1]:
        return None
    diff = _moved(run, q, k, v, *poisoned(k, v), base)
    return diff is not None and (f"its output changed (by {diff:.3g}) when key 0 of the probe's call was NaN and "
                                 "its last value inf (the runtime passes them to such a type as they are)") or None


def refuse_false_declarations(module: Any, fn: Any, where: str, base: Any, when: str,
                              deps: Sequence[Tuple[set, set]] = (),
                              redraw: Optional[Tuple[Callable[[Any, Any, Any], Any], List[Any]]] = None) -> None:
    """Refuse a false ``self_gated = True`` (``base``: the module's output on the probe call ``when``,
    :func:`refuse_open_gate`) and, given ``redraw`` = ``(run, [q, k, v])`` of that call, a false
    ``reads_keys = False`` (:func:`key_blind_leak`, ``deps`` of the gradient probe)."""
    refuse_open_gate(module, fn, where, base, when)
    if redraw is None or reads_keys(module):
        return
    run, (q, k, v) = redraw
    leak = key_blind_leak(run, q, k, v, base, deps)
    if leak:
        raise AttentionContractError(
            f"{where}: attention type {fn!r} ({type(module).__name__}) declares {READS_KEYS_ATTR} = False (its "
            f"output depends on no key or value, so the runtime passes a NaN or inf key to it unguarded), but "
            f"{leak}: a NaN key would reach every query of the call, also those that do not link it. "
            f"Fix: {READS_KEYS_FIX}")
