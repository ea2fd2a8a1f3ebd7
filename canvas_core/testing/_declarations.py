"""The kit's checks of what a type declares about itself, run only for a type that declares it.

* **reads no key** (``reads_keys = False``): no gradient reaches the keys or values, and other keys,
  a NaN key and an inf value leave the output as it was (the runtime passes them to such a type
  unguarded).
* **self_gated** (``self_gated = True``): a freshly built module outputs exactly 0 on the kit's
  calls, with and without a mask of several key sets (a backbone install drops the block's zero
  gate for such a type, trusting its own to keep the backbone unchanged at initialisation).

The same declarations are held to at build time by ``canvas_core.runtime.type_declared``.
"""

from __future__ import annotations

from typing import Any

from canvas_core.testing._report import Failed

__all__ = ["check_reads_no_key", "check_self_gated"]


def check_reads_no_key(s: Any) -> None:
    """A type declaring ``reads_keys = False`` (the runtime then skips its NaN guard for it) must
    not depend on keys or values: no gradient reaches them and other keys give the same output."""
    from canvas_core.runtime.type_declared import READS_KEYS_FIX, poisoned

    torch = s.torch
    q, k, v = s.qkv()
    k.requires_grad_(True)
    v.requires_grad_(True)
    out = s.call(q, k, v)
    if out.requires_grad:
        (out * s.rand(*out.shape)).sum().backward()
    for what, t in (("keys", k), ("values", v)):
        if t.grad is not None and bool((t.grad != 0).any()):
            raise Failed(f"declares reads_keys = False, but its output has a gradient w.r.t. the {what} "
                         f"(max |grad| {float(t.grad.abs().max()):.3g}); {READS_KEYS_FIX}")
    with torch.no_grad():
        others = {"other keys and values": s.call(q, s.rand(*k.shape), s.rand(*v.shape)),
                  "a NaN key and an inf value": s.call(q, *poisoned(k, v))}
    for what, other in others.items():
        if not torch.equal(out.detach(), other):
            raise Failed(f"declares reads_keys = False, but {what} change its output (max diff "
                         f"{float((out.detach() - other).abs().nan_to_num(float('inf')).max()):.3g}); "
                         f"{READS_KEYS_FIX}")


def check_self_gated(s: Any) -> None:
    """A type declaring ``self_gated = True``, built again as the kit builds it (nothing trained),
    outputs exactly 0: as the runtime calls it with the dependency probe's key sets, and without a
    mask.  The failure names the largest ``|output|``."""
    from canvas_core.runtime.type_declared import SELF_GATED_FIX, open_gate_claim
    from canvas_core.testing._exactness import NQ, probe_mask

    torch = s.torch
    with s.guard.watch("building it again"):
        fresh = s.build()
    mask = probe_mask(torch, s.device, s.n_keys)
    calls = {f"key sets {NQ} queries x {s.n_keys} keys, as the runtime calls it": (s.qkv(NQ, s.n_keys), mask),
             f"{s.Nq} queries x {s.Nk} keys, every key linked": (s.qkv(), None)}
    with torch.no_grad():
        for what, ((q, k, v), m) in calls.items():
            out = s.call(q, k, v, m, mod=fresh)
            if bool(out.any()):
                raise Failed(f"{open_gate_claim(out)} ({what}); {SELF_GATED_FIX}")
