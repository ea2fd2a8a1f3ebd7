"""Conformance of an attention type, called exactly as the canvas runtime calls it.

Every call goes through :func:`canvas_core.runtime.type_call.call_attention_type` (the adapter
``CanvasAttention``, ``AttentionDispatcher`` and the backbone processors use), and a freshly built
module is first checked with :func:`~canvas_core.runtime.type_call.check_attention_module`, so a
type the runtime would refuse fails ``construct`` here with the same message.  Masks are
``(Nq, Nk)`` booleans, the shape the runtime passes.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

from canvas_core.testing._declarations import check_reads_no_key, check_self_gated
from canvas_core.testing._exactness import NK, check_dependencies, check_direct_mask, check_trainable, large_batch_leak
from canvas_core.testing._process import ProcessGuard
from canvas_core.testing._report import (ConformanceReport, Failed, check_flags, check_seed, check_sizes, check_target,
                                         finish, resolve_device, resolve_dtype)

__all__ = ["check_attention_type", "ATTENTION_PROPERTIES"]

#: the properties :func:`check_attention_type` checks, in order.
ATTENTION_PROPERTIES = (
    "construct", "shape/dtype/device", "Nq != Nk", "gradients", "deterministic", "batch independence",
    "empty keys", "one key", "fully masked query",
    "dependency exactness", "key_mask respected", "trainable", "process state",
    # a type declaring reads_keys = False only:
    "reads no key",
    # a type declaring self_gated = True only:
    "self_gated",
    # strict=True only:
    "zeros without keys",
)


class _Suite:
    """The module under test, its inputs and the runtime's way of calling it."""

    def __init__(self, torch: Any, build: Callable[[], Any], module: Any, report: ConformanceReport,
                 *, seed: int, batch: int, d_model: int, dtype: Any, device: Any, n_keys: int = NK,
                 name: Any = None) -> None:
        from canvas_core.runtime.type_call import call_attention_type
        from canvas_core.runtime.type_values import steady_tolerance

        self.torch, self.build, self.module, self.report = torch, build, module, report
        self.seed, self.B, self.D, self.n_keys = seed, batch, d_model, n_keys
        self.Nq, self.Nk = 5, 7
        self.dtype, self.device = dtype, device
        self.tol = steady_tolerance(dtype)
        self.gen = torch.Generator().manual_seed(seed + 12345)
        self._call = call_attention_type
        self.name = name  # the registered name (None: a class / factory), for the runtime's messages
        #: why the value comparisons cannot hold (the output varies between identical calls), or None
        self.unsteady: Optional[str] = None
        self.guard: Any = None  # the ProcessGuard of the run (set by check_attention_type)
        #: the gradient dependencies of 'dependency exactness' (the runtime's call on the probe mask), or None
        self.runtime_deps: Optional[List[Any]] = None

    def rand(self, *shape: int) -> Any:
        return self.torch.randn(*shape, generator=self.gen).to(device=self.device, dtype=self.dtype)

    def qkv(self, nq: Optional[int] = None, nk: Optional[int] = None):
        nq, nk = self.Nq if nq is None else nq, self.Nk if nk is None else nk
        return self.rand(self.B, nq, self.D), self.rand(self.B, nk, self.D), self.rand(self.B, nk, self.D)

    def mask(self, p_keep: float) -> Any:
        return (self.torch.rand(self.Nq, self.Nk, generator=self.gen) < p_keep).to(self.device)

    def call(self, q: Any, k: Any, v: Any, mask: Any = None, mod: Any = None) -> Any:
        self.torch.manual_seed(self.seed + 1)  # types drawing randomness in forward stay reproducible
        return self._call(self.module if mod is None else mod, q, k, v, mask, name=self.name)

    def calls(self, q: Any, k: Any, v: Any, mask: Any = None) -> Any:
        """``[(how, output)]``: as the runtime calls it and, for a forward that takes ``key_mask``,
        directly as ``module(q, k, v, key_mask=mask)`` (how code outside the runtime calls it)."""
        from canvas_core.runtime.type_call import MASKED, calling_convention

        out = [("as the runtime calls it", self.call(q, k, v, mask))]
        if calling_convention(self.module) == MASKED:
            self.torch.manual_seed(self.seed + 1)
            out.append(("called directly with key_mask", self.module(q, k, v, key_mask=mask)))
        return out

    def expect(self, out: Any, nq: int, what: str) -> None:
        torch = self.torch
        want = (self.B, nq, self.D)
        if not isinstance(out, torch.Tensor):
            raise Failed(f"{what}: returned {type(out).__name__}, expected a tensor")
        if tuple(out.shape) != want:
            raise Failed(f"{what}: output shape {tuple(out.shape)}, expected (B, Nq, D) = {want}")
        if out.dtype != self.dtype:
            raise Failed(f"{what}: output dtype {out.dtype}, input dtype {self.dtype}")
        if out.device.type != self.device.type:
            raise Failed(f"{what}: output on {out.device}, input on {self.device}")
        if not torch.isfinite(out).all():
            raise Failed(f"{what}: {int((~torch.isfinite(out)).sum())} NaN/inf values in the output")

    def close(self, diff: float, scale: float) -> bool:
        return diff <= self.tol * scale * 10


# ---------------------------------------------------------------------- the properties
def _shape(s: _Suite) -> None:
    with s.torch.no_grad():
        s.expect(s.call(*s.qkv()), s.Nq, f"(B, Nq, Nk) = {(s.B, s.Nq, s.Nk)}")
        s.expect(s.call(*s.qkv(s.Nk)), s.Nk, f"(B, Nq, Nk) = {(s.B, s.Nk, s.Nk)}")


def _nq_nk(s: _Suite) -> None:
    with s.torch.no_grad():
        for nq, nk in ((9, 4), (2, 11)):
            s.expect(s.call(*s.qkv(nq, nk)), nq, f"(B, Nq, Nk) = {(s.B, nq, nk)}")


def _gradients(s: _Suite, grad_inputs: Sequence[str]) -> Optional[str]:
    torch = s.torch
    q, k, v = (t.requires_grad_() for t in s.qkv())
    params = [p for p in s.module.parameters() if p.requires_grad]
    s.module.zero_grad(set_to_none=True)
    out = s.call(q, k, v)
    if not out.requires_grad:
        if params:
            raise Failed("the output does not require grad although the module has trainable "
                         "parameters (detached computation?)")
        return "the output depends on no input or parameter (nothing to differentiate)"
    (out * s.rand(s.B, s.Nq, s.D)).sum().backward()
    who = f"attention type {s.report.name!r}"
    # connected: a graph path exists (the gradient may still be zero, e.g. behind a zero gate)
    connected, flowing = {}, {}
    for label, t in (("queries", q), ("keys", k), ("values", v)):
        g = t.grad
        if g is not None and not torch.isfinite(g).all():
            raise Failed(f"{who}: the gradient w.r.t. its {label} holds NaN or inf (dtype {s.dtype}, "
                         f"(B, Nq, Nk) = {(s.B, s.Nq, s.Nk)}); keep its backward finite")
        connected[label] = g is not None
        flowing[label] = g is not None and bool(g.abs().sum() > 0)
    p_flow = 0
    for p_name, p in s.module.named_parameters():
        if p.requires_grad and p.grad is not None:
            if not torch.isfinite(p.grad).all():
                raise Failed(f"{who}: parameter {p_name!r} gets a NaN or inf gradient (dtype {s.dtype}, "
                             f"(B, Nq, Nk) = {(s.B, s.Nq, s.Nk)}); keep its gradients finite")
            p_flow += bool(p.grad.abs().sum() > 0)
    s.report.details["gradient flow"] = {
        **{k_: ("non-zero" if flowing[k_] else "zero" if connected[k_] else "none") for k_ in connected},
        "parameters": f"{p_flow}/{len(params)} non-zero"}
    missing = [r for r in grad_inputs if not connected.get(r, False)]
    if missing:
        raise Failed(f"no gradient path to {', '.join(missing)} (grad_inputs={tuple(grad_inputs)})")
    if not any(connected.values()):
        raise Failed("the output has no gradient path to the queries, keys or values")
    if params and p_flow == 0:
        raise Failed(f"none of the {len(params)} trainable parameters gets a non-zero gradient")
    if not params and not any(flowing.values()):
        raise Failed("every gradient is zero")
    return None


def _batch(s: _Suite) -> Optional[str]:
    """Each sample in turn gets new inputs (every other sample's output must stay), then the
    gradient of every output sample must vanish on every other sample's inputs."""
    from canvas_core.runtime.type_probe import batch_leak, zeros_opened

    q, k, v = s.qkv()
    with s.torch.no_grad():
        base = s.call(q, k, v)
        scale = float(base.abs().max()) + 1.0
        for b in range(s.B if s.unsteady is None else 0):
            q2, k2, v2 = q.clone(), k.clone(), v.clone()
            q2[b], k2[b], v2[b] = s.rand(s.Nq, s.D) * 3, s.rand(s.Nk, s.D) * 3, s.rand(s.Nk, s.D) * 3
            other = s.call(q2, k2, v2)
            for j in range(s.B):
                diff = float((base[j] - other[j]).abs().max())
                if j != b and not s.close(diff, scale):
                    raise Failed(f"changing sample {b}'s inputs changed sample {j}'s output by {diff:.3g}")
    leak = None if s.unsteady else large_batch_leak(s)  # (a type may mix samples only above some size)
    if leak:
        raise Failed(f"by value: {leak}")
    leak = batch_leak(s.call, q, k, v)
    if leak is None:  # a closed (zero) gate may hide the mixing that training opens
        with zeros_opened(s.module) as opened:
            leak = batch_leak(s.call, q, k, v) if opened else None
    if leak:
        raise Failed(f"by gradient (batch of {s.B}): {leak}")
    return s.unsteady and f"{s.unsteady}; checked by gradient only"


def _empty(s: _Suite) -> None:
    zero = True
    with s.torch.no_grad():
        for how, out in s.calls(*s.qkv(nk=0)):
            s.expect(out, s.Nq, f"empty key set (Nk = 0), {how}")
            zero = zero and bool((out == 0).all())
    s.report.details["zeros with Nk=0"] = zero


def _one(s: _Suite) -> None:
    with s.torch.no_grad():
        s.expect(s.call(*s.qkv(nk=1)), s.Nq, "one key (Nk = 1)")


def _fully_masked(s: _Suite) -> None:
    mask = s.mask(0.6)
    mask[:, 0] = True
    mask[0, :] = False  # query 0 may read nothing
    zero = True
    with s.torch.no_grad():
        for how, out in s.calls(*s.qkv(), mask):
            s.expect(out, s.Nq, f"key_mask with a fully masked query, {how}")
            zero = zero and bool((out[:, 0] == 0).all())
    s.report.details["zeros for fully masked query"] = zero


def _deterministic(s: _Suite) -> None:
    """Two identical calls of the module agree, also with a call with other inputs before the third
    (else the value comparisons of the properties after it are skipped: nothing could be blamed on
    another sample's inputs), and so does a fresh module.  One set of five calls serves both checks
    (``repeated_calls``), one more the fresh module."""
    from canvas_core.runtime.type_values import UNSTEADY, calls_differ, kept_state, repeated_calls

    q, k, v = s.qkv()
    calls = repeated_calls(s.call, q, k, v)
    state = kept_state(calls)  # the same inputs after a call with other inputs
    if state:
        s.unsteady = "the type keeps state between calls (see 'deterministic'), so two calls cannot be compared"
        raise Failed(f"with the global RNG seeded alike before every call, {state}")
    a, again, _ = calls
    spread = calls_differ(a, again)
    if spread is not None:
        s.unsteady = (f"the type is not deterministic (two identical calls differ by {spread:.3g}, see "
                      "'deterministic'), so outputs of two calls cannot be compared")
        raise Failed(f"two identical calls of one module, the global RNG seeded alike, give different outputs "
                     f"(max diff {spread:.3g}): {UNSTEADY}")
    with s.guard.watch("building it again"):
        other = s.build()
    with s.torch.no_grad():
        b = s.call(q, k, v, mod=other)
    if not s.torch.allclose(a, b, rtol=s.tol, atol=s.tol):
        raise Failed(f"two modules built with seed {s.seed} give different outputs on the same "
                     f"input (max diff {float((a - b).abs().max()):.3g})")


def _zeros(s: _Suite) -> None:
    with s.torch.no_grad():
        for how, out in s.calls(*s.qkv(nk=0)):
            if not bool((out == 0).all()):
                raise Failed(f"with Nk = 0 ({how}) the output is not zero (max |out| {float(out.abs().max()):.3g})")
        mask = s.torch.ones(s.Nq, s.Nk, dtype=s.torch.bool, device=s.device)
        mask[2, :] = False
        for how, out in s.calls(*s.qkv(), mask):
            if not bool((out[:, 2] == 0).all()):
                raise Failed(f"a query whose key_mask row is all False does not output zeros ({how})")


def _process_state(s: _Suite) -> Optional[str]:
    """Default dtype left alone by every build and property; no reseeding of the global RNG (the
    call made here without the kit's seeding, which would hide it)."""
    q, k, v = s.qkv()
    return s.guard.check(lambda: s._call(s.module, q, k, v, name=s.name))


# ---------------------------------------------------------------------- the suite
_GRAD_INPUTS = ("queries", "keys", "values")


def _grad_inputs(value: Any, where: str) -> List[str]:
    """``grad_inputs`` as a list of input names; a bare string or an unknown name is the caller's
    mistake, refused before the type runs."""
    from canvas_core.errors import CanvasTypeError, did_you_mean

    if value is None:
        return []
    if isinstance(value, str):
        raise CanvasTypeError(f"{where}: grad_inputs must be a tuple of input names, got the string {value!r}; "
                              f"write grad_inputs=({value!r},)")
    try:
        names = list(value)
    except TypeError:
        raise CanvasTypeError(f"{where}: grad_inputs must be a tuple of names from {_GRAD_INPUTS}, got "
                              f"{type(value).__name__} {value!r}") from None
    for n in names:
        if n not in _GRAD_INPUTS:
            hint = did_you_mean(n, _GRAD_INPUTS) if isinstance(n, str) else ""
            raise CanvasTypeError(f"{where}: grad_inputs has {n!r}, which is not an input name.{hint} Use names "
                                  f"from {_GRAD_INPUTS}")
    return names


def _target_spec(name: Any, label: str) -> Any:
    """The registry entry the kit builds: a registered name's own, or for a class / factory an
    in-process entry of it, so both are built by ``build_attention`` alike."""
    if isinstance(name, str):
        from canvas_core.plugins import get_host

        return get_host().lookup("attention", name)
    from canvas_core.plugins.spec import Spec

    spec = Spec(name="kit_target", factory=name, module=getattr(name, "__module__", None))
    spec.name = label  # shown as given ('<lambda>' too), which the name check would refuse
    return spec


def check_attention_type(name: Any, d_model: int = 32, n_heads: int = 4, device: Any = "cpu",
                         dtype: Any = None, *, seed: int = 0, batch: int = 3, strict: bool = False,
                         grad_inputs: Optional[Sequence[str]] = None, raise_on_failure: bool = True,
                         distribution: Optional[str] = None, n_keys: int = NK, **kwargs: Any) -> ConformanceReport:
    """Conformance suite of an attention type (registered name, or a factory / class).

    Builds the type as ``create_attention(name, d_model, n_heads, dropout=0.0, **kwargs)`` does
    (``build_attention``; a class or factory given instead of a name alike, canvas-engineering's
    positional ``cls(d_model, n_heads, dropout)`` included, and a keyword the type does not take
    fails ``construct`` naming it and what the type accepts) under ``torch.manual_seed(seed)``,
    moves it to ``device`` / ``dtype`` (default float32) and checks that the runtime can call it
    (``construct``: the same check, and the same error, as when a canvas layer is built), then
    each property, calling it as the runtime does.  A type that writes into the tensors it is
    given fails every property that calls it with the same ``AttentionContractError`` naming it
    (``refuse_in_place``), never torch's bare "modified by an inplace operation":

    * ``shape/dtype/device``: ``(B, Nq, D)`` output with the input's dtype and device;
    * ``Nq != Nk``: works with more and with fewer queries than keys;
    * ``gradients``: backward works, every gradient is finite, the output has a gradient path to
      some input and, if the module has parameters, some parameter gets a non-zero gradient
      (``grad_inputs=("queries", "keys", "values")`` requires a path to each of those); skipped
      when the output depends on nothing;
    * ``deterministic``: two identical calls of the module agree (also with a call with other inputs
      between them: a type keeping state between calls fails, said so), and so does a fresh module built
      with the same seed; run before the value comparisons below, which a type whose identical
      calls differ skips (reported as skipped; their gradient probes still run);
    * ``batch independence``: changing any one sample of the batch leaves every other sample's
      output as it was (also in one larger call, ``_exactness.large_side`` queries and keys), and
      no output sample has a gradient w.r.t. another sample's inputs;
    * ``empty keys`` (``Nk == 0``), ``one key``, ``fully masked query`` (a ``(Nq, Nk)``
      ``key_mask`` row with no allowed key): correct shape, no NaN / inf;
    * ``dependency exactness``: called as the runtime calls it with several key sets (two of the
      same shape, stacked in one call for a per-key-set type), each output row depends by gradient
      only on its own query and its linked keys; a leak names the query and the key.  Then by
      value (a read behind ``.detach()`` has no gradient): each key set's queries and keys, and
      the unlinked keys, get new values in turn, and every row reading none of them keeps its output
      (again with two stacked key sets of ``large_side`` queries x keys, then with one query alone
      changed, and with ``ROW_SETS`` = 16 small key sets stacked: ``16 * batch`` rows in one call);
    * ``key_mask respected``: a ``forward`` taking ``key_mask``, called directly with it, passes
      the same probe when it declares ``key_mask_exact = True``, else never reads a key the mask
      hides from every query (a forward without ``key_mask``: called as the runtime calls it);
    * ``trainable``: with only its parameters free, 5 Adam steps toward a random target move the
      output (skipped for a type without parameters);
    * ``reads no key``: a type declaring ``reads_keys = False`` has no gradient w.r.t. keys or
      values and the same output for other ones (only checked for a type with the declaration);
    * ``self_gated``: a type declaring ``self_gated = True``, built again, outputs exactly 0
      (only checked for a type with the declaration: ``_declarations.check_self_gated``);
    * ``strict=True`` adds ``zeros without keys`` (queries with no key output exactly 0);
    * ``process state``: neither building it nor calling it changes torch's default dtype, and its
      forward does not reseed the global RNG.  Every build and property runs with the default
      dtype and the random state put back afterwards (the caller's RNG is left as it was).

    An input whose values change during a call (a write through ``.data`` included, which moves
    no version counter) fails every property that calls it, naming the input.
    Sizes: ``batch`` samples (at least 2), 5 queries and 7 keys (also 9/4, 2/11, 1 and 0 keys);
    the dependency probes use 6 queries and ``n_keys`` keys (default 9: two stacked key sets of 3
    keys; ``n_keys=N`` gives them ``(N - 3) // 2`` keys each); the value checks also make one
    larger call (72 queries and keys per key set, or ``(n_keys - 3) // 2`` when more) and one with
    16 key sets of 2 queries x 3 keys.  A type
    that misbehaves only on still larger inputs passes; ``canvas_core.verify_structure`` probes a
    built model at its real size.

    A registered ``name`` is refused (``PluginError`` naming both providers) when it resolves to
    another distribution than ``distribution`` (the one under test, when given), or when a plugin's
    registration of it was refused because a builtin has it (the builtin would be tested).

    A type that does not declare ``key_mask_exact = True`` is called once per shape of key set
    (the key sets of that shape stacked along the batch), as the runtime calls it; the mask
    properties also call a ``forward`` that takes ``key_mask`` directly with the mask.

    The kit's own arguments are checked before the type is built: a wrong one (``batch < 2``, a
    non-int ``seed``, ``grad_inputs`` given as a bare string or naming an unknown input, a
    non-floating ``dtype``, a device this machine lacks) raises a ``CanvasError`` about it.

    Returns the :class:`ConformanceReport`; raises ``AssertionError`` naming the type and every
    failed property when one fails (unless ``raise_on_failure=False``).
    """
    import torch

    from canvas_core.errors import CanvasTypeError
    from canvas_core.runtime.type_call import MASKED, UNMASKED, check_attention_module, reads_keys, runs_per_key_set
    from canvas_core.runtime.type_probe import refuse_in_place
    from canvas_core.runtime.type_declared import declares_self_gated

    where = "check_attention_type"
    check_target(name, where, "attention", distribution)
    check_sizes(where, d_model=d_model, n_heads=n_heads, batch=batch, n_keys=n_keys)
    if batch < 2:
        raise CanvasTypeError(f"{where}: batch must be at least 2 (the batch-independence property compares "
                              f"samples), got {batch}; leave the default batch=3")
    if n_keys < NK:
        raise CanvasTypeError(f"{where}: n_keys must be at least {NK} (the dependency probe's smallest key "
                              f"sets), got {n_keys}")
    check_seed(where, seed)
    check_flags(where, strict=strict, raise_on_failure=raise_on_failure)
    grad_inputs = _grad_inputs(grad_inputs, where)
    dtype = resolve_dtype(torch, dtype, where)
    device = resolve_device(torch, device, where)
    label = name if isinstance(name, str) else getattr(name, "__name__", repr(name))
    report = ConformanceReport(str(label))
    head = f"attention type {report.name!r} fails the canvas conformance suite"

    def build() -> Any:
        from canvas_core.plugins.resolve import build_attention

        torch.manual_seed(seed)
        # one road for a name and a class: keyword or canvas-engineering positional call, and a
        # factory keyword the type does not take named with what it accepts
        module = build_attention(_target_spec(name, report.name), d_model, n_heads=n_heads, dropout=0.0, **kwargs)
        return module.to(device=device, dtype=dtype) if hasattr(module, "to") else module

    guard = ProcessGuard(torch, device)
    fn_name = name if isinstance(name, str) else None  # a class / factory: named by its module's class
    try:
        with guard.watch("building it"):
            module = build()
        convention = check_attention_module(module, name)
    except Exception as exc:
        report.failed["construct"] = f"building it raised {type(exc).__name__}: {exc}"
        return finish(report, raise_on_failure, head)
    report.passed.append("construct")
    suite = _Suite(torch, build, module, report, seed=seed, batch=batch, d_model=d_model,
                   dtype=dtype, device=device, n_keys=n_keys, name=fn_name)
    suite.guard = guard

    checks: Dict[str, Callable[[], Optional[str]]] = {
        "shape/dtype/device": lambda: _shape(suite),
        "Nq != Nk": lambda: _nq_nk(suite),
        "gradients": lambda: _gradients(suite, grad_inputs),
        "deterministic": lambda: _deterministic(suite),  # first: the value comparisons below need it
        "batch independence": lambda: _batch(suite),
        "empty keys": lambda: _empty(suite),
        "one key": lambda: _one(suite),
        "fully masked query": lambda: _fully_masked(suite),
    }
    checks["dependency exactness"] = lambda: check_dependencies(suite)
    checks["key_mask respected"] = lambda: check_direct_mask(suite)
    checks["trainable"] = lambda: check_trainable(suite)
    if not reads_keys(module):
        checks["reads no key"] = lambda: check_reads_no_key(suite)
    if declares_self_gated(module):
        checks["self_gated"] = lambda: check_self_gated(suite)
    if strict:
        checks["zeros without keys"] = lambda: _zeros(suite)
    checks["process state"] = lambda: _process_state(suite)
    for prop, fn in checks.items():
        try:  # a write into an input: one named error, every property; dtype and RNG restored after
            with guard.watch(f"property {prop!r}"), refuse_in_place(module, fn_name):
                skip = fn()
        except Failed as exc:
            report.failed[prop] = str(exc)
        except Exception as exc:
            report.failed[prop] = f"raised {type(exc).__name__}: {exc}"
        else:
            if skip:
                report.skipped[prop] = skip
            else:
                report.passed.append(prop)
    report.details["accepts key_mask"] = convention == MASKED
    # "key_mask": one masked call (key_mask_exact); "per_key_set": one call per shape of key set
    report.details["calling convention"] = UNMASKED if runs_per_key_set(module) else MASKED
    return finish(report, raise_on_failure, head)
