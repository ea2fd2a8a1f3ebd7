"""Build-time probes of an attention type's module: does it keep the contract, can it learn?

Both run one tiny call (batch 1, 4 queries, 6 keys: key sets {0, 1} -> {0, 1, 2}, {2, 3} ->
{3, 4, 5}, stacked in one call for a per-key-set type; the contract probe also a batch of 2)
through :func:`~canvas_core.runtime.type_call.call_attention_type`, in eval mode (the contract
probe's reads also on a copy in training mode, by gradient and by value), whatever mode the module
is in when built, on the module's own device and dtype, the global random state restored
afterwards (reproducible builds).

* :func:`probe_attention_module` refuses (``AttentionContractError``, naming ``where``: the
  connection) a module that returns a wrong shape / dtype / device or whose output depends on a
  key outside its key set, on another query or on another sample of the batch (by gradient, and
  by value: one more call with sample 0's first key set changed, which must leave sample 1 and
  the other key set's rows as they were; a read behind ``.detach()`` has no gradient) or after a
  call with other inputs (state kept between calls); given the plan's runner, it probes reads
  again at the shapes the runtime will use and with as many stacked rows (:func:`probe_runtime_shapes`).
  The canvas layer and the backbone install run it on plugin types (the builtins are tested).
  It also holds a type to what it declares (``type_declared``): ``self_gated = True`` must give
  exactly 0 on its calls as built, ``reads_keys = False`` no read of a key (by gradient, by value).
* :func:`init_gradient_problem` says why no parameter of the branch (the module's, and the gate's
  when one is given) receives a gradient at initialisation, or None when one does;
  :func:`constant_branch` spots a branch with nothing to learn at all (``none``: no parameter, 0).
* :func:`dependencies` / :func:`first_leak`: the gradient probe both use (and the conformance kit);
  :func:`batch_leak`: the same probe across the samples of the batch (from ``type_reads``).
* :func:`refuse_in_place` (``type_in_place``): around a probe, refuses a module that writes into
  its inputs (their ``_version`` moved, or their values changed: a ``.data`` write), autograd's
  bare in-place error included, naming the type.  A NaN / inf output or gradient of a read probe is
  refused as such (it would read as a dependency on everything); a non-canvas exception of the
  type, an allocator's out-of-memory error included, is said naming the connection, the type and
  its provider (``type_values.probe_failure``).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch

from canvas_core.errors import AttentionContractError, CanvasError
from canvas_core.runtime.type_call import call_attention_type, is_builtin_module, key_set_groups, runs_per_key_set
from canvas_core.runtime.type_declared import refuse_false_declarations, refuse_open_gate
from canvas_core.runtime.type_in_place import autograd_in_place, in_place_error, refuse_in_place
from canvas_core.runtime.type_reads import batch_leak, dependencies, first_leak, key_runs
from canvas_core.runtime.type_values import (KEEPS_STATE, calls_differ, kept_state, mixed_dtypes_explained, out_of_memory,
                                             probe_failure, repeated_calls, reseeded, rng_fork, rows_leak,
                                             state_from_inputs, value_leak)

__all__ = ["probe_attention_module", "probe_runtime_shapes", "mixed_dtypes_explained", "init_gradient_problem",
           "init_gradient_found", "constant_branch", "gate_opening_dependencies", "dependencies", "first_leak",
           "batch_leak", "key_runs",
           "is_builtin_module", "refuse_in_place", "in_place_error", "zeros_opened"]

def _where(module: Any) -> Tuple[Any, Any]:
    """(device, dtype) of the probe inputs: the first floating tensor's, but the default dtype
    (what a layer built beside it computes in) when the parameters mix it with others."""
    floats = [t for t in list(module.parameters()) + list(module.buffers()) if t.is_floating_point()]
    if not floats:  # a parameter-free type: where the layer builds (meta under torch.device("meta"))
        return torch.get_default_device(), torch.get_default_dtype()
    mixed = torch.get_default_dtype() in {t.dtype for t in floats[1:]}
    return floats[0].device, torch.get_default_dtype() if mixed else floats[0].dtype


@contextlib.contextmanager
def _quiet(module: Any) -> Iterator[None]:
    """Eval mode and the global random state as they were, afterwards."""
    was = module.training
    module.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        module.train(was)


def _inputs(module: Any, d_model: int, batch: int = 1):
    device, dtype = _where(module)
    gen = torch.Generator().manual_seed(1234)
    # sample 0 is drawn first whatever the batch: the one-sample probe and the first sample agree
    draws = [[torch.randn(1, n, d_model, generator=gen) for n in (4, 6, 6)] for _ in range(batch)]
    q, k, v = (torch.cat(parts).to(device=device, dtype=dtype) for parts in zip(*draws))
    one = torch.ones(2, 3, dtype=torch.bool)
    return q, k, v, torch.block_diag(one, one).to(device)  # key sets {0, 1} -> {0, 1, 2}, {2, 3} -> {3, 4, 5}


@contextlib.contextmanager
def zeros_opened(module: Any) -> Iterator[List[str]]:
    """Within the block, every floating parameter that is exactly 0 everywhere (a closed gate such as
    ``gated``'s ``alpha``) holds fixed random values, restored afterwards; yields their names (empty:
    none).  A probe that saw no read runs again inside it: a zero gate hides reads training opens."""
    named = [(n, p) for n, p in module.named_parameters()
             if p.is_floating_point() and p.numel() and not bool(p.detach().any())]
    zero = [p for _, p in named]
    saved = [p.detach().clone() for p in zero]
    gen = torch.Generator().manual_seed(4321)
    try:
        with torch.no_grad():
            for p in zero:
                p.copy_((0.5 * torch.randn(tuple(p.shape), generator=gen)).to(p))
        yield [n for n, _ in named]
    finally:
        with torch.no_grad():
            for p, old in zip(zero, saved):
                p.copy_(old)


def gate_opening_dependencies(module: Any, run: Callable[[Any, Any, Any], Any], q: Any, k: Any, v: Any,
                              rows: Optional[Sequence[int]] = None) -> Tuple[List[Tuple[set, set]], bool]:
    """:func:`dependencies` of ``run`` (``rows``: as there); when no output depends on any key, again
    with ``module``'s closed gates opened (:func:`zeros_opened`).  Returns the dependencies and
    whether they come from that second run.  Refuses a module writing into its inputs."""
    with refuse_in_place(module):
        deps = dependencies(run, q, k, v, rows=rows)
        if any(dk for _, dk in deps):
            return deps, False
        with zeros_opened(module) as opened:
            return (dependencies(run, q, k, v, rows=rows), True) if opened else (deps, False)


def probe_attention_module(module: Any, fn: Any, d_model: int, where: str, runner: Any = None) -> None:
    """One tiny call (again with closed gates opened when it reads no key, :func:`zeros_opened`); a
    wrong output or a read outside the key sets raises ``AttentionContractError`` starting with
    ``where``; so does a module writing into its inputs (:func:`refuse_in_place`) or failing with
    parameters of mixed dtypes (:func:`mixed_dtypes_explained`).  ``runner``: the ``PlanRunner``
    that will call the type, whose shapes are probed too (:func:`probe_runtime_shapes`).  Under
    ``enable_grad``: a layer built inside ``torch.no_grad()`` is probed all the same."""
    if _where(module)[0].type == "meta" or torch.is_inference_mode_enabled():
        return  # nothing to run on / no autograd to ask (the layer is probed when built outside it)
    try:
        with mixed_dtypes_explained(module, fn, where), refuse_in_place(module, fn, where), torch.enable_grad():
            _probe_contract(module, fn, d_model, where)
            if runner is not None:
                probe_runtime_shapes(module, fn, d_model, where, runner)
    except Exception as exc:  # the plugin's own error (the runtime shapes say theirs): name who raised it
        if isinstance(exc, CanvasError) or autograd_in_place(exc) is not None:
            raise
        shapes = [(2, n, d_model) for n in (4, 6, 6)]
        raise probe_failure(exc, module, fn, where, "the build probe's small random call", shapes) from exc


#: per probed call <= SHAPE_BUDGET Nq*Nk*d_model a sample, MAX_SETS key sets; MAX_SHAPES shapes, MAX_ROWS rows
SHAPE_BUDGET, MAX_SETS, MAX_SHAPES, MAX_ROWS = 1 << 18, 4, 6, 8


def _runtime_calls(module: Any, fn: Any, runner: Any, d_model: int) -> Iterator[Tuple[int, str, int, int, Any]]:
    """``(G, label, nq, nk, mask)`` of the calls ``runner`` makes (as ``run_module_groups`` picks),
    largest first, cut to the budget: per stacked shape (``mask`` None), or the masked call (``G`` 0)."""
    i = list(runner.other_fns).index(fn)
    if runs_per_key_set(module) or (runner.key_sets_cheaper(i) and is_builtin_module(module)):
        shapes = {(nq, nk): G for _, _, G, nq, nk, *_ in runner.flat_buckets(i)}
        calls = [(G, f"{G} key set{'s' * (G > 1)} of {nq} queries x {nk} keys, stacked", nq, nk, None)
                 for (nq, nk), G in sorted(shapes.items(), key=lambda s: -s[0][0] * s[0][1])[:MAX_SHAPES]]
    else:
        mask = runner.key_mask(i)
        calls = [(0, f"its masked call, {mask.shape[0]} queries x {mask.shape[1]} keys", *mask.shape, mask)]
    for G, label, nq, nk, mask in (c for c in calls if c[2] and c[3]):  # a call with no query or key: none
        nq2 = min(nq, max(1, SHAPE_BUDGET // max(1, nk * d_model)))
        nk2 = min(nk, max(1, SHAPE_BUDGET // (nq2 * d_model)))
        G2 = min(G, MAX_SETS, max(2, SHAPE_BUDGET // (nq2 * nk2 * d_model)))
        if (nq2, nk2, G2) != (nq, nk, G):
            label += f"; probed on a prefix: {f'{G2} key sets of ' if G else ''}{nq2} queries x {nk2} keys"
        yield G2, label, int(nq2), int(nk2), None if mask is None else mask[:nq2, :nk2].cpu()


def probe_runtime_shapes(module: Any, fn: Any, d_model: int, where: str, runner: Any) -> None:
    """The key-exactness and batch-leak probes of :func:`probe_attention_module` (eval mode, batch
    2, closed gates opened when nothing is read; by gradient, then by value with one more call in
    which sample 0's first key set changes) at the shapes ``runner`` will call the type with:
    each stacked key-set shape ``(Nq_g, Nk_g)`` (``PlanRunner.flat_buckets``), or an exact-mask
    type's masked call with its real linked mask (``PlanRunner.key_mask``).  A sample, not a
    proof: within the budget above, a larger call cut to a prefix of its queries, then keys; the
    restricted plans of ``active_regions`` and Mochi's dropped text tokens are not probed.  Raises
    ``AttentionContractError`` starting with ``where``, also for a type failing at such a shape."""
    from canvas_core.runtime.type_call import call_exact_masked, run_flat_buckets

    device, dtype = _where(module)
    gen = torch.Generator().manual_seed(2468)
    for G, label, nq, nk, mask in _runtime_calls(module, fn, runner, d_model) if fn in runner.other_fns else ():
        n_q, n_k = max(G, 1) * nq, max(G, 1) * nk
        q, k, v = (torch.randn(2, n, d_model, generator=gen).to(device=device, dtype=dtype) for n in (n_q, n_k, n_k))
        if mask is None:  # G key sets of nq queries x nk keys, stacked as run_flat_buckets stacks them
            flat = [(torch.arange(n_q, device=device), torch.arange(n_k, device=device), G, nq, nk)]
            mask = torch.block_diag(*[torch.ones(nq, nk, dtype=torch.bool)] * G)
            run = lambda a, b, c, flat=flat: run_flat_buckets(module, a, b, c, flat, name=fn)[0]  # noqa: E731
        else:
            run = lambda a, b, c, m=mask.to(device): call_exact_masked(module, a, b, c, m, fn)  # noqa: E731
        rows = sorted({int(r) for r in torch.linspace(0, n_q - 1, min(n_q, MAX_ROWS)).round()})
        try:
            with _quiet(module):
                with torch.no_grad():
                    base = run(q, k, v)
                _finite(base, where, fn, module, f"at a shape the runtime calls it with ({label})")
                refuse_open_gate(module, fn, where, base, f"a shape the runtime calls it with ({label})")
                deps, opened = gate_opening_dependencies(module, run, q, k, v, rows)
                leak = first_leak(deps, mask)
                with zeros_opened(module) if opened and not leak else contextlib.nullcontext():
                    leak = leak or batch_leak(run, q, k, v)
                    # by value, one more call: sample 0's first key set changed (a read behind .detach())
                    first = _first_set(mask)
                    leak = leak or value_leak(run, q, k, v, mask, *first, sample=0, base=None if opened else base)
                    if not G and not leak:  # the masked call's rows are the samples: one sample is a call of its own
                        leak = value_leak(run, q[:1], k[:1], v[:1], mask, *first, graded=False)
                        leak = leak and f"{leak} (a call of one sample)"
        except Exception as exc:  # what it raises at the real size, said at build (in-place: as such)
            if isinstance(exc, CanvasError) and str(exc).startswith(where) or autograd_in_place(exc) is not None:
                raise  # (a CanvasError that does not name the connection is said again below, naming it)
            if out_of_memory(exc) is not None:
                raise probe_failure(exc, module, fn, where, f"a shape the runtime calls it with ({label})",
                                    (q.shape, k.shape, v.shape)) from exc
            raise AttentionContractError(
                f"{where}: attention type {fn!r} ({type(module).__name__}) fails at a shape the runtime calls it "
                f"with ({label}): {type(exc).__name__}: {str(exc)[:200]}") from exc
        if leak:
            _refuse(module, fn, where, f"{leak}, at a shape the runtime calls it with ({label})")
    if fn in runner.other_fns:
        _probe_stacked_rows(module, fn, d_model, where, runner)


#: per-key-set sides, fewest rows and element budget (per input, all samples) of the stacked-rows probe
ROW_SIDES, MIN_ROWS, ROW_BUDGET = (2, 4), 16, 1 << 22


def _probe_stacked_rows(module: Any, fn: Any, d_model: int, where: str, runner: Any) -> None:
    """By value, every key set of the bucket stacking the most (``G``), at batch 2 or more (``2 G``
    rows in one call, as a batch-2 forward stacks, and at least ``MIN_ROWS``; the shape probes cut
    ``G`` to ``MAX_SETS``), each key set cut to ``ROW_SIDES`` queries x keys: a type mixing the
    rows of a call only when there are many (a statistic over dim 0 above some count) is refused."""
    from canvas_core.runtime.type_call import run_flat_buckets

    i = list(runner.other_fns).index(fn)
    if not (runs_per_key_set(module) or (runner.key_sets_cheaper(i) and is_builtin_module(module))):
        return  # one masked call: its rows are the batch's samples
    G, nq, nk = max(((b[2], min(b[3], ROW_SIDES[0]), min(b[4], ROW_SIDES[1])) for b in runner.flat_buckets(i)
                     if b[3] and b[4]), default=(0, 0, 0))
    if not G:
        return
    B = max(2, -(-MIN_ROWS // G))
    G = min(G, max(1, ROW_BUDGET // (B * (nq + nk) * d_model)))
    device, dtype = _where(module)
    gen = torch.Generator().manual_seed(1357)
    q, k, v = (torch.randn(B, G * n, d_model, generator=gen).to(device=device, dtype=dtype) for n in (nq, nk, nk))
    flat = [(torch.arange(G * nq, device=device), torch.arange(G * nk, device=device), G, nq, nk)]
    label = f"{G} key sets of {nq} queries x {nk} keys stacked at batch {B}: {B * G} rows in one call"
    try:
        with _quiet(module), rng_fork(device):
            leak = rows_leak(reseeded(lambda a, b, c: run_flat_buckets(module, a, b, c, flat, name=fn)[0], device),
                             q, k, v, nq, nk)
    except Exception as exc:
        if isinstance(exc, CanvasError) or autograd_in_place(exc) is not None:
            raise
        raise probe_failure(exc, module, fn, where, f"the stacked-rows probe ({label})",
                            (q.shape, k.shape, v.shape)) from exc
    if leak:
        _refuse(module, fn, where, f"{leak}, at a shape the runtime calls it with ({label})")


def _first_set(mask: Any) -> Tuple[List[int], List[int]]:
    """(queries, keys) of the first key set of the ``(Nq, Nk)`` bool ``mask``; ([], []) for none."""
    groups = key_set_groups(mask.cpu())
    return ([int(i) for i in groups[0][0]], [int(j) for j in groups[0][1]]) if groups else ([], [])


def _finite(out: Any, where: str, fn: Any, module: Any, when: str) -> None:
    if isinstance(out, torch.Tensor) and out.is_floating_point() and not bool(torch.isfinite(out).all()):
        raise AttentionContractError(  # NaN gradients would read as a dependency on everything: say so
            f"{where}: attention type {fn!r} ({type(module).__name__}) returns NaN or infinite values on "
            f"finite inputs ({when}); fix its arithmetic (a division by zero, the log of 0, an overflow)")


def _refuse(module: Any, fn: Any, where: str, leak: str) -> None:
    if runs_per_key_set(module):
        how = "called once per key set (key sets of one shape stacked along the batch), it"
        fix = ("compute each query's output from that query and the keys and values of its own row of the call "
               "only: never mix the queries, nor the rows of a call (its stacked key sets and samples, dim 0: "
               "no mean, norm or other statistic over them)")
    else:
        how = "declares key_mask_exact = True but its masked call"
        fix = ("honour key_mask exactly (row i reads only the keys key_mask[i] allows, and is 0 for a row with "
               "none), or drop the key_mask_exact declaration (the runtime then calls it once per key set)")
    raise AttentionContractError(
        f"{where}: attention type {fn!r} ({type(module).__name__}) {how} reads outside the linked "
        f"keys: {leak} (queries, keys and samples numbered in the probe's call, not canvas positions). "
        f"A type must read only the keys its connections link: {fix}")


def _named(exc: AttentionContractError, module: Any, fn: Any, where: str) -> AttentionContractError:
    """``exc`` of a probe helper, said again starting with ``where`` and naming the type."""
    text = str(exc)
    if text.startswith("the attention type"):
        text = f"attention type {fn!r} ({type(module).__name__})" + text[len("the attention type"):]
    return AttentionContractError(f"{where}: {text}")


def _probe_contract(module: Any, fn: Any, d_model: int, where: str) -> None:
    q, k, v, mask = _inputs(module, d_model)

    def runner(mod: Any) -> Callable[[Any, Any, Any], Any]:
        return lambda a, b, c: call_attention_type(mod, a, b, c, mask, name=fn)

    q2, k2, v2, _ = _inputs(module, d_model, batch=2)
    with _quiet(module):
        try:  # (a NaN output or gradient is refused as such, not read as a dependency on everything)
            deps, opened = gate_opening_dependencies(module, runner(module), q, k, v)
            leak = first_leak(deps, mask)
            # two samples, with the gates as the key probe had them: does one read the other?
            with zeros_opened(module) if opened and not leak else contextlib.nullcontext():
                leak = leak or batch_leak(runner(module), q2, k2, v2)
        except AttentionContractError as exc:
            raise _named(exc, module, fn, where) from exc
        with torch.no_grad():
            base = call_attention_type(module, q2, k2, v2, mask, name=fn)
        _finite(base, where, fn, module, "a small random call")
        refuse_false_declarations(module, fn, where, base, "the build probe's small random call", deps,
                                  (runner(module), [q2, k2, v2]))
        # by value (one more call): a read behind .detach() has no gradient; sample 0's key set
        # {0, 1} -> {0, 1, 2} changes, so sample 1 and rows 2, 3 of sample 0 must keep their output
        leak = leak or value_leak(runner(module), q2, k2, v2, mask, (0, 1), (0, 1, 2), sample=0, base=base)
        if not runs_per_key_set(module):  # one masked call: its rows are the samples (a stacked-rows probe)
            leak = leak or _other_batches(module, runner(module), d_model, mask, (q, k, v))
        # the same inputs after a call with others (every call seeded alike)
        calls = None if leak else _repeat(module, runner, (q2, k2, v2))
    _refuse_unsteady(module, fn, where, calls)
    # training mode, on a copy (a batch statistic mixes the stacked key sets, the samples)
    leak, state = (leak, None) if leak else _training_leak(module, runner, mask, (q, k, v), (q2, k2, v2))
    if leak:
        _refuse(module, fn, where, leak)
    if state:
        raise AttentionContractError(f"{where}: attention type {fn!r} ({type(module).__name__}): {state} "
                                     "(in training mode)")


def _repeat(module: Any, runner: Callable[[Any], Any], two: tuple) -> Tuple[tuple, Optional[tuple]]:
    """``(calls, replay)``: ``repeated_calls`` of ``module`` on ``two``, every call seeded alike, and,
    only when its identical calls differ, the same five calls of a copy of ``module`` taken before
    them (its parameters shared, the rest copied; None when it cannot be copied).  A replay giving
    the same outputs says the difference comes from what the module kept (a call counter), not from
    randomness outside torch's generators."""
    device = _where(module)[0]
    try:
        before = copy.deepcopy(module, {id(p): p for p in module.parameters()})
    except Exception:
        before = None
    with rng_fork(device):
        calls = repeated_calls(reseeded(runner(module), device), *two)
    if before is None or calls_differ(calls[0], calls[1]) is None:
        return calls, None
    with rng_fork(device):
        return calls, repeated_calls(reseeded(runner(before), device), *two)


#: samples of the many-samples call of the small probe (a masked type's rows are the batch's samples)
MANY_SAMPLES = 16


def _other_batches(module: Any, run: Callable[[Any, Any, Any], Any], d_model: int, mask: Any,
                   one: tuple) -> Optional[str]:
    """By value, the small call at batch 1 (``one``: a branch taken for one sample) and at
    ``MANY_SAMPLES`` (a statistic over the samples of a call above some count), sample 0's first
    key set changed: the other key set's rows, and every other sample, must keep their output."""
    leak = value_leak(run, *one, mask, (0, 1), (0, 1, 2))
    if leak:
        return f"{leak} (a call of one sample)"
    many = _inputs(module, d_model, batch=MANY_SAMPLES)[:3]
    leak = value_leak(run, *many, mask, (0, 1), (0, 1, 2), sample=0, graded=False)
    return leak and f"{leak} ({MANY_SAMPLES} samples in one call)"


def _refuse_unsteady(module: Any, fn: Any, where: str, calls: Optional[Tuple[tuple, Optional[tuple]]]) -> None:
    """Refuse what ``calls`` (:func:`_repeat`) show: the same inputs give another output after a call
    with other inputs, or identical calls differ and a copy of the module taken before them
    differs alike (a call counter: state).  Identical calls that differ otherwise (randomness
    outside torch's generators, a clock) are not blamed: nothing ties them to another call's keys."""
    if calls is None:
        return
    (a, again, after), replay = calls
    who = f"{where}: attention type {fn!r} ({type(module).__name__})"
    state = kept_state((a, again, after))
    if state:
        raise AttentionContractError(f"{who}: {state}")
    spread = calls_differ(a, again)
    if replay is not None and spread is not None and calls_differ(a, replay[0]) is None \
            and calls_differ(again, replay[1]) is None:
        raise AttentionContractError(
            f"{who}: two identical calls give different outputs (by {spread:.3g}, "
            "torch's random generators "
            "and Python's and numpy's seeded alike before each), and a copy of the module taken before them gives the same two: its output "
            f"depends on how often it was called ({KEEPS_STATE}); keep no call counter or other state in forward "
            "(a step count for a schedule belongs to the training loop, passed in as a parameter or buffer it sets)")


def _training_leak(module: Any, runner: Callable[[Any], Any], mask: Any, one: tuple,
                   two: tuple) -> Tuple[Optional[str], Optional[str]]:
    """The read probes of :func:`_probe_contract` on a copy of ``module`` in training mode: by
    gradient (``one``: the one-sample inputs, ``two``: the two-sample ones) and by value (sample 0's
    first key set changed), every call seeded alike so that dropout draws the same masks in the
    base and the changed call; then, when nothing leaked, whether what it keeps from a call depends
    on that call's inputs (:func:`state_from_inputs`).  Only an input-dependent state is refused in
    training mode: spectral norm's power iteration, an average of the weights or dropout from a
    generator of its own change the output from call to call there, legitimately.
    ``(leak, state)``, None for nothing found (or a module that cannot be copied or run so: what was
    found before stands)."""
    device = _where(module)[0]
    probes = (lambda twin: first_leak(dependencies(runner(twin), *one), mask),
              lambda twin: batch_leak(runner(twin), *two),
              lambda twin: value_leak(reseeded(runner(twin), device), *two, mask, (0, 1), (0, 1, 2), sample=0))
    leak = state = None
    try:
        twin = copy.deepcopy(module).train()
        for probe in probes:
            with rng_fork(device):
                leak = probe(twin)
            if leak:
                break
        if not leak:
            with rng_fork(device):
                state = state_from_inputs(twin, lambda m: reseeded(runner(m), device), *two)
    except Exception:
        pass  # what was found before it stands
    return leak and f"{leak} (in training mode)", state


def constant_branch(module: Any, fn: Any, d_model: int, where: Optional[str] = None) -> bool:
    """Whether the type's branch can never learn: no parameter of its own and an output that is 0
    on random inputs (``none``), so that a gate multiplying it never gets a gradient either.  A
    parameter-free type with a real output is no constant branch: its gate learns.  ``where``:
    the connection, named when the call fails on mixed parameter dtypes."""
    if any(p.requires_grad and p.is_floating_point() for p in module.parameters()) or _where(module)[0].type == "meta":
        return False
    q, k, v, mask = _inputs(module, d_model)
    with mixed_dtypes_explained(module, fn, where), _quiet(module), torch.no_grad():
        return not bool(call_attention_type(module, q, k, v, mask, name=fn).any())


def _init_gradient_probed(module: Any, gate: Any = None) -> bool:
    """Whether :func:`init_gradient_problem` can run its probe here: not on the meta device, not
    under ``torch.inference_mode`` (no autograd to ask)."""
    return not (_where(module)[0].type == "meta" or torch.is_inference_mode_enabled()
                or (gate is not None and gate.is_meta))


def init_gradient_found(module: Any, gate: Any = None) -> bool:
    """Whether a None from :func:`init_gradient_problem` for ``module`` (and ``gate``) means its
    probe saw a gradient: the probe can run here and the branch has something trainable.  A
    ``learns_at_init=False`` declaration is called wrong only then, never by a probe that did not run."""
    trainable = any(p.requires_grad for p in module.parameters()) or bool(gate is not None and gate.requires_grad)
    return trainable and _init_gradient_probed(module, gate)


def init_gradient_problem(module: Any, fn: Any, d_model: int, gate: Any = None,
                          where: Optional[str] = None) -> Optional[str]:
    """Why this branch cannot learn from initialisation (None: it can, or the type has no
    parameter).  ``gate``: a scalar parameter the output is multiplied by, or None; ``where``: the
    connection, named when the call fails on mixed parameter dtypes (:func:`mixed_dtypes_explained`).
    Two checks: some parameter of the branch (the module's and the gate's) gets a nonzero gradient
    (two zero gates stacked fail it), and, with a gate, some parameter of the module itself gets one
    with the gate taken as open (a zero gate learns on its own: a detached module would hide behind it)."""
    if not _init_gradient_probed(module, gate):
        return None  # nothing to run on (or no autograd to ask, under inference_mode)
    params = [p for p in module.parameters() if p.requires_grad and p.is_floating_point()]
    if gate is not None and not gate.requires_grad and not bool(gate.detach().any()):
        return f"the gate of {fn!r} is frozen at 0: no parameter of the branch can receive a gradient"
    gates = [gate] if gate is not None and gate.requires_grad else []
    if not params and not gates:
        return None  # nothing of its own to train
    q, k, v, mask = _inputs(module, d_model)
    with mixed_dtypes_explained(module, fn, where), _quiet(module), torch.enable_grad():  # as under no_grad
        raw = call_attention_type(module, q, k, v, mask, name=fn)
        if params and not raw.requires_grad:
            return (f"the output of {fn!r} does not depend on its parameters (unused, or a detached computation; "
                    "probed in eval mode)")
        weights = torch.randn_like(raw)
        if params:
            own = torch.autograd.grad((raw * weights).sum(), params, allow_unused=True, retain_graph=bool(gates))
        if gates:  # (a branch that is 0, ``none``, is screened by constant_branch first)
            gated = ((raw * gate.to(raw.dtype)) * weights).sum()
            grads = torch.autograd.grad(gated, params + gates, allow_unused=True)
        else:
            grads = own
    if not any(g is not None and bool((g != 0).any()) for g in grads):
        what = "its parameters and its gate" if gates else "its parameters"
        return (f"no parameter of {fn!r} receives a gradient at initialisation (every gradient of {what} is "
                "exactly 0, e.g. a zero gate times another zero gate; probed in eval mode): trained, this "
                "connection cannot learn")
    if params and not any(g is not None and bool((g != 0).any()) for g in own):
        return (f"no parameter of {fn!r}'s own module receives a gradient, even with its gate open (every "
                "gradient is exactly 0 or missing: an unused or detached parameter; probed in eval mode): "
                "trained, only the gate moves and the type itself cannot learn")
    return None
