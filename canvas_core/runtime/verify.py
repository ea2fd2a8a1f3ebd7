"""`verify_structure`: check that a built model reads only what its topology declares.

The probe: random inputs, and a random cotangent on the outputs of one probed query (or of one
cell of queries that read the same keys, see ``verify_probe.probe_rows``); the gradient (a vector-Jacobian product) with respect to the input is non-zero exactly at
the positions that output depends on (for generic random inputs and weights).  What the topology
declares comes from the plan (DESIGN.md, "Semantics of a canvas attention layer"): query p of fn
group f may read ``D_f(p)`` and itself (its own query, or passing through unchanged).

What is probed, by kind of model:

* a :class:`~canvas_core.runtime.canvas_attention.CanvasAttention` (or ``AttentionDispatcher``):
  each fn group's output on its own (softmax kernels on the layer's projections, every other
  type's module on its linked sets), judged against that group's declared pattern, then the whole
  layer against the union;
* a backbone with an installed topology (``adapter.install_topology``): the installed attention
  core, on random queries / keys / values of the token sequence (one probe for the shared softmax
  kernels, one per block for the gated modules of the other types, with the gate opened for the
  probe when it is still 0: the block's gate, or a self-gated type's own all-zero parameters);
* any other module taking ``(B, N, D)`` canvas states (a stack of canvas layers, a world model):
  the whole model, judged against the reachability closure of its layers' plans: one layer lets
  query p read ``D(p) + {p}``; L layers applied in turn let it read every position reachable in L
  such steps (``R <- R | R M_l``).  So a stack can only be checked for what no path through its
  layers allows: e.g. with a causal topology, no stack may ever read a later frame.

Exact for small canvases (every query position), sampled for large ones (one random query per
(region, frame) cell, then uniform ones; the report says so).
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from canvas_core.errors import CanvasError, CanvasTypeError, ShapeError
from canvas_core.runtime.verify_probe import (  # noqa: F401
    PositionLabels, checked_input, choose_queries, dead_entries, declared_rows, linked_connections, mixes_batch,
    probe_rows, query_cells, undeclared_entries,
)
from canvas_core.runtime.verify_report import DeadLink, StructureReport, UndeclaredDependency  # noqa: F401
from canvas_core.runtime.verify_guard import check_finite, lean_kernels, naming_failures
from canvas_core.runtime.verify_run import _Run, _device_dtype, _probing, _randn

__all__ = ["verify_structure", "StructureReport"]


def _module_group(ex: Any, f: str, modules: Dict[str, nn.Module]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Output of the non-softmax group ``f`` of a runner alone, ``(B, N, D)``: the runtime's own
    :func:`run_module_groups` with the gate of ``f`` at 1 and of every other type at 0."""
    from canvas_core.runtime.plan_runner import run_module_groups

    def run(x: torch.Tensor) -> torch.Tensor:
        gates = {g: x.new_tensor(1.0 if g == f else 0.0) for g in ex.other_names}
        out = run_module_groups(ex, x, modules, gates)
        return x.new_zeros(x.shape) if out is None else out
    return run


def _softmax_group(ex: Any, i: int, scale: float, qkv: Callable[[torch.Tensor], Tuple]) -> Callable:
    """Output of the i-th softmax kernel of a runner alone, ``(B, N, H * d)``."""
    from canvas_core.runtime.plan_runner import mix_softmax_groups

    def run(x: torch.Tensor) -> torch.Tensor:
        q, k, v = qkv(x)
        if getattr(ex, "full", False):  # every pair linked: the runner built no kernel, plain SDPA runs
            o, _ = mix_softmax_groups(ex, q, k, v, scale=scale)
        else:
            o = ex.kernels[f"k{i}"](q, k, v, scale=scale, dropout_p=0.0)  # (B, H, N, d)
        return o.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
    return run


def _judge_groups(run: _Run, where: str, plan: Any, labels: PositionLabels, queries: np.ndarray,
                  groups: Dict[str, Tuple[Callable, Callable]], runs: Any) -> np.ndarray:
    """Probe each fn group on its own; returns the (nq, n) bool union of its undeclared reads.
    ``runs``: the runner (its kernels and fn modules, named when they fail)."""
    n = int(plan.n)
    seen = np.zeros((len(queries), n), dtype=bool)
    by_fn: Dict[str, np.ndarray] = {}
    cells = query_cells([plan], queries, labels.frame)
    linked = linked_connections(plan)
    unlinked = [ci for ci, f in enumerate(plan.fn_of_connection) if f in groups and ci not in linked]
    for f, (fn, make) in list(groups.items()):
        if not any(g == f and ci in linked for ci, g in enumerate(plan.fn_of_connection)):
            continue  # links nothing: its connections are dead links (below), gate or no gate
        allowed = declared_rows([plan], queries, fn=f)
        with naming_failures(f"{where} fn {f!r}", plan, runs.modules, runs.kernels.get(f, "")):
            s = _probe_group(run, where, f, (fn, make), plan, queries, allowed, cells)
        if s is None:
            continue
        by_fn[f] = s
        entries, bad = undeclared_entries(where, f, s, allowed, queries, labels, run.rtol)
        run.undeclared += entries
        seen |= bad
    conns = sorted({ci for ci, f in enumerate(plan.fn_of_connection) if f in by_fn} | set(unlinked))
    run.dead += dead_entries(where, plan, None, queries, labels, run.rtol, conns,
                             group_of=lambda ci: by_fn[plan.fn_of_connection[ci]])
    return seen


def _probe_group(run: _Run, where: str, f: str, group: Tuple[Callable, Callable], plan: Any, queries: np.ndarray,
                 allowed: np.ndarray, cells: np.ndarray) -> Optional[np.ndarray]:
    """The strengths of fn group ``f`` probed alone, or None (with a note) when it outputs 0 whatever its input."""
    fn, make = group
    if _silent(fn, make, run.gen):
        linked = linked_connections(plan)
        n_conn = sum(1 for ci, g in enumerate(plan.fn_of_connection) if g == f and ci in linked)
        run.notes.append(f"{where}: fn {f!r} outputs 0 whatever its input (a gate that starts closed?), so its "
                         f"{n_conn} connection(s) carry no signal yet; not counted as dead links")
        return None
    return run.probe(f"{where} fn {f!r}", fn, make, queries, int(plan.n), allowed=allowed, cells=cells)


class _Runs:
    """What runs each fn type of a runner, named when it fails: ``modules`` (fn -> its module, or its
    softmax kernel) and ``kernels`` (softmax fn -> the kernel's description)."""

    def __init__(self, ex: Any, mods: Dict[str, nn.Module]) -> None:
        self.modules: Dict[str, nn.Module] = dict(mods)
        for i, f in enumerate(ex.soft_fns):
            if f"k{i}" in ex.kernels:
                self.modules[f] = ex.kernels[f"k{i}"]
        self.kernels = {f: f"kernel {k}" for f, k in ex.describe_kernels().items() if f in ex.soft_fns}


def _model_runs(model: nn.Module) -> Tuple[Any, List[Tuple[str, nn.Module]]]:
    """The first canvas layer's plan, and ``(fn, its module or kernel)`` over every canvas layer of ``model``."""
    from canvas_core.runtime.canvas_attention import CanvasAttention

    plan, out = None, []
    for layer in (m for m in model.modules() if isinstance(m, CanvasAttention)):
        plan = plan if plan is not None else layer.plan
        mods = {f: layer.fn_modules[f.replace(".", "__")] for f in layer.executor.other_names}
        out += list(_Runs(layer.executor, mods).modules.items())
    return plan, out


def _silent(fn: Callable, make: Callable, gen: torch.Generator) -> bool:
    """Whether ``fn``'s output depends on no input at all (e.g. a type whose gate starts at 0)."""
    x = make(1, gen).requires_grad_(True)
    out = fn(x)
    check_finite(out, "output")
    if not out.requires_grad:
        return True
    (g,) = torch.autograd.grad(out, x, torch.randn(out.shape, generator=gen).to(out), allow_unused=True)
    check_finite(g, "gradient")
    return g is None or not bool(g.abs().max() > 0)


def _silent_fns(model: nn.Module, gen: torch.Generator) -> set:
    """The non-softmax fn types that output 0 whatever their input in every canvas layer of
    ``model`` that runs them."""
    from canvas_core.runtime.canvas_attention import CanvasAttention

    quiet: Dict[str, bool] = {}
    for layer in model.modules():
        if isinstance(layer, CanvasAttention):
            ex = layer.executor
            mods = {f: layer.fn_modules[f.replace(".", "__")] for f in ex.other_names}
            make = _randn((int(layer.plan.n), layer.d_model), *_device_dtype(layer))
            for f in ex.other_names:
                quiet[f] = quiet.get(f, True) and _silent(_module_group(ex, f, mods), make, gen)
    return {f for f, q in quiet.items() if q}


def _verify_layer(run: _Run, layer: nn.Module, make_input: Optional[Callable] = None, where: str = "layer") -> None:
    plan, ex = layer.plan, layer.executor
    n, D, H, hd = int(plan.n), layer.d_model, layer.n_heads, layer.head_dim
    device, dtype = _device_dtype(layer)
    make = (_randn((n, D), device, dtype) if make_input is None
            else checked_input(make_input, n, f"this {type(layer).__name__}", D, device, dtype))
    labels = PositionLabels(plan.layout)
    queries = run.queries(n, labels)

    def qkv(x):
        return layer.qkv(x).reshape(x.shape[0], n, 3, H, hd).permute(2, 0, 3, 1, 4)

    groups: Dict[str, Tuple[Callable, Callable]] = {}
    scale = layer.beta / math.sqrt(hd)
    for i, f in enumerate(ex.soft_fns):
        groups[f] = (_softmax_group(ex, i, scale, qkv), make)
    mods = {f: layer.fn_modules[f.replace(".", "__")] for f in ex.other_names}
    runs = _Runs(ex, mods)
    # a type whose own gate is closed (gated at init) is probed open; a failing type is named
    with ExitStack() as opened, naming_failures(where, plan, runs.modules):
        for f in ex.other_names:
            groups[f] = (_module_group(ex, f, mods), make)
            _open_own_gate(run, opened, where, f, mods[f], groups[f][0], make)
        seen = _judge_groups(run, where, plan, labels, queries, groups, runs)
        allowed = declared_rows([plan], queries)
        whole = run.probe(where, layer, make, queries, n, True, allowed, query_cells([plan], queries, labels.frame))
    entries, _ = undeclared_entries(where, None, whole, allowed, queries, labels, run.rtol, _candidates([plan]),
                                    skip=seen)
    run.undeclared += entries
    run.parts.append(where)


def _candidates(plans: Sequence[Any]) -> Callable[[int], Tuple[str, ...]]:
    def of(q: int) -> Tuple[str, ...]:
        found: List[str] = []
        for plan in plans:
            for f, w in plan.query_weight.items():
                if w[plan.inv_perm[q]] > 0 and f not in found:
                    found.append(f)
        return tuple(found)
    return of


def _block_topologies(model: nn.Module) -> List[Tuple[str, Any]]:
    """``(name, BlockTopology)`` of every block holding an installed topology: through the
    model's backbone adapter (diffusers processors are not modules), else its modules."""
    from canvas_core.looping.installed import BlockTopology

    targets: List[Tuple[str, Any]] = []
    try:
        from canvas_core.looping import get_adapter

        ad = get_adapter(model)
        targets = [(f"block {i}", t) for i, t in enumerate(ad.attention_targets(model))]
    except (CanvasError, LookupError, TypeError, ValueError):
        targets = []
    if not targets:
        targets = [(name or type(m).__name__, m) for name, m in model.named_modules()]
    return [(name, t.canvas_topology) for name, t in targets
            if isinstance(getattr(t, "canvas_topology", None), BlockTopology)]


def _verify_backbone(run: _Run, model: nn.Module, blocks: List[Tuple[str, Any]]) -> None:
    shared_seen: Dict[int, Any] = {}
    for name, bt in blocks:
        shared = bt.shared
        plan, tokens = shared.token_plan, shared.tokens
        n, H, hd = int(shared.seq_len), shared.n_heads, shared.head_dim
        device, dtype = _device_dtype(model)
        labels = PositionLabels(tokens.layout, index=tokens.token_index)
        queries = run.queries(n, labels)
        runner = shared.runner_for(device)
        groups: Dict[str, Tuple[Callable, Callable]] = {}
        if id(shared) not in shared_seen:  # the softmax kernels are shared by every block
            shared_seen[id(shared)] = shared

            def qkv(x, n=n, H=H, hd=hd):
                return x.reshape(x.shape[0], n, 3, H, hd).permute(2, 0, 3, 1, 4)

            for i, f in enumerate(runner.soft_fns):
                groups[f] = (_softmax_group(runner, i, 1.0 / math.sqrt(hd), qkv), _randn((n, 3 * H * hd), device, dtype))
            where = "backbone attention" if len(blocks) > 1 else name
            if groups:
                _judge_groups(run, where, plan, labels, queries, groups, _Runs(runner, {}))
                run.parts.append(where)
            groups = {}
        mods = {f: bt.modules[f.replace(".", "__")].module for f in runner.other_names}
        # self-gated types' closed gates stay open while probed; a failing type is named
        with ExitStack() as opened, naming_failures(name, plan, mods):
            for f in runner.other_names:
                gm = bt.modules[f.replace(".", "__")]
                group = _module_group(runner, f, mods)  # the block's gate of f: 1, i.e. open
                make = _randn((n, _width(gm.module, H * hd)), device, dtype)
                if gm.gate is None:  # the type gates itself (``gated``): open its own gate
                    _open_own_gate(run, opened, name, f, gm.module, group, make)
                elif float(gm.gate.detach().abs().max()) == 0.0:
                    run.notes.append(f"{name}: fn {f!r} has its gate at 0, so it adds nothing to the model yet; "
                                     "its links were probed with the gate opened")
                groups[f] = (group, make)
            if groups:
                _judge_groups(run, name, plan, labels, queries, groups, _Runs(runner, mods))
                run.parts.append(name)


def _open_own_gate(run: _Run, opened: ExitStack, where: str, f: str, module: nn.Module, group: Callable,
                   make: Callable) -> None:
    """A self-gated type (no block gate, ``GatedTypeModule.gate`` None) whose output is still 0
    whatever its input: its all-zero parameters (its closed gate, e.g. ``gated``'s ``gate_alpha``)
    hold random values until ``opened`` closes (:func:`~canvas_core.runtime.type_probe.zeros_opened`),
    so the probe measures what the type reads once training opens the gate.  A type whose own
    gate is already open is probed as it is."""
    from canvas_core.runtime.type_probe import zeros_opened

    if not _silent(group, make, run.gen):
        return
    zero = opened.enter_context(zeros_opened(module))  # the names of the parameters it opened
    if zero:
        run.notes.append(f"{where}: fn {f!r} gates itself and its gate is closed ({', '.join(zero)} at 0), so it adds "
                         "nothing to the model yet; its links were probed with those parameters set to random values")


def _width(module: nn.Module, default: int) -> int:
    """The width a type's module was built for (its first linear layer's input), else ``default``."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            return int(m.in_features)
    return default


def _called_plans(model: nn.Module, make: Callable, gen: torch.Generator, probe_input: bool = True) -> List[Any]:
    """The plans of the canvas layers ``model`` runs, in the order it runs them (one forward pass
    with hooks: a layer applied twice, e.g. a weight-tied loop, counts twice)."""
    from canvas_core.runtime.canvas_attention import CanvasAttention

    called: List[Any] = []  # layer(x) and layer.delta(x) alike (a forward hook misses .delta)
    hooks = [m.observe_updates(lambda layer, x, active: called.append(layer.plan))
             for m in model.modules() if isinstance(m, CanvasAttention)]
    try:
        with torch.no_grad():
            x = make(1, gen)
            try:
                model(x)
            except (TypeError, RuntimeError) as exc:  # a forward taking more than the canvas, another width
                if isinstance(exc, CanvasError) or type(exc).__name__ == "OutOfMemoryError" or not probe_input:
                    raise  # the user's own make_input: the model's error is not about our probe
                bad = CanvasTypeError if isinstance(exc, TypeError) else ShapeError
                raise bad(
                    f"verify_structure: {type(model).__name__}(x) raised {type(exc).__name__} ({str(exc)[:200]}) "
                    f"on a probe input x of shape {tuple(x.shape)}; it is called with the canvas alone: pass "
                    "d_model= (its input width) or make_input= (inputs it takes), or wrap it in an nn.Module "
                    "whose forward(x) passes its other arguments") from exc
    finally:
        for h in hooks:
            h.remove()
    return called


def _refuse_sequence_parallel(model: nn.Module) -> None:
    """Refuse a model holding sequence-parallel layers on this rank alone, before any probe: the probe
    needs the whole canvas, and a forward of such a layer would wait for the other ranks (or, on
    every rank, run on a share of the wrong shape)."""
    from canvas_core.runtime.sequence_parallel import SequenceParallelError, listed, parallel_layer_names

    names = parallel_layer_names(model.named_modules())
    if names:
        raise SequenceParallelError(
            f"verify_structure: layer(s) {listed(names)} of "
            f"{type(model).__name__} run sequence-parallel (SequenceParallelCanvasAttention, from "
            "parallelize_canvas): each takes its rank's share of the canvas, and the probe needs the whole "
            "canvas on one rank. Verify the model before parallelize_canvas, or a plain copy on one rank: "
            "save_canvas_checkpoint(model, path, schema), load_canvas_checkpoint(plain_model, path, schema) "
            "into a model built without parallelize_canvas, then verify_structure(plain_model)")


def _verify_model(run: _Run, model: nn.Module, layout: Any, topology: Any, plan: Any, layers: Optional[int],
                  d_model: Optional[int], make_input: Optional[Callable]) -> None:
    from canvas_core.runtime.canvas_attention import CanvasAttention

    if plan is None and topology is not None:
        if layout is None:
            raise CanvasTypeError("verify_structure(model, layout, topology): pass the CanvasLayout with the topology")
        from canvas_core.compiler.lowering import lower

        plan = lower(topology, layout)
    found = next((m for m in model.modules() if isinstance(m, CanvasAttention)), None)
    base = plan if plan is not None else getattr(found, "plan", None)
    if base is None:
        raise CanvasTypeError(
            f"verify_structure: {type(model).__name__} holds no CanvasAttention layer and no installed "
            "topology; pass the declared structure: verify_structure(model, layout, topology, layers=L)")
    n = int(base.n)
    device, dtype = _device_dtype(model)
    if d_model is None:  # a canvas layer, or a stack starting with one, reads its own width
        first = model[0] if isinstance(model, nn.Sequential) and len(model) else model
        d_model = first.d_model if isinstance(first, CanvasAttention) else base.layout.d_model
    D = int(d_model)
    make = (_randn((n, D), device, dtype) if make_input is None
            else checked_input(make_input, n, type(model).__name__))
    called = _called_plans(model, make, run.gen, probe_input=make_input is None)
    if plan is not None:
        plans = [plan] * int(layers if layers is not None else max(1, len(called)))
    elif not called:
        raise CanvasTypeError(f"verify_structure: {type(model).__name__} ran none of its CanvasAttention layers "
                              "on a (B, N, D) input; pass layout, topology and layers=L")
    else:
        plans = called if layers is None else [called[0]] * int(layers)
    if any(int(p.n) != n for p in plans):
        raise CanvasTypeError("verify_structure: the canvas layers of the model have canvases of different sizes "
                              f"({sorted({int(p.n) for p in plans})} positions); verify each layer on its own")
    labels = PositionLabels(base.layout)
    queries = run.queries(n, labels)
    run.hops = len(plans)
    allowed = declared_rows(plans, queries)
    s = run.probe("model", model, make, queries, n, True, allowed, query_cells(plans, queries, labels.frame))
    entries, _ = undeclared_entries("model", None, s, allowed, queries, labels, run.rtol, _candidates(plans))
    run.undeclared += entries
    seen: set = set()
    quiet = _silent_fns(model, run.gen)
    for f in sorted(quiet):
        run.notes.append(f"model: fn {f!r} outputs 0 whatever its input in every layer (a gate that "
                         "starts closed?), so its connections carry no signal yet; not counted as dead links")
    for p in plans:  # every declared one-hop link must reach the output (through the identity paths)
        if id(p) not in seen:
            seen.add(id(p))
            linked = linked_connections(p)  # a connection linking nothing is dead, gate or no gate
            conns = [ci for ci, f in enumerate(p.fn_of_connection) if f not in quiet or ci not in linked]
            for d in dead_entries("model", p, s, queries, labels, run.rtol, conns):
                if d not in run.dead:  # layers built from equal topologies report a link once
                    run.dead.append(d)
    run.parts.append("model")


def verify_structure(model: nn.Module, layout: Any = None, topology: Any = None, *, plan: Any = None,
                     layers: Optional[int] = None, d_model: Optional[int] = None,
                     make_input: Optional[Callable[[int, torch.Generator], torch.Tensor]] = None,
                     max_exact: int = 512, samples: int = 256, probes: int = 2, chunk: int = 32,
                     rtol: float = 1e-6, seed: int = 0, require_signal: bool = False,
                     progress: Optional[Callable[[str, int, int], None]] = None,
                     as_built: bool = False) -> StructureReport:
    """Probe a built model and report every dependency its topology does not declare and every
    declared link that carries no signal (see the module docstring for what is probed).

    Args:
        model: a ``CanvasAttention`` / ``AttentionDispatcher``; a backbone with an installed
            topology; or any module mapping ``(B, N, D)`` canvas states to ``(B, N, D')``.
        layout, topology: the declared structure of a model (default: the plans of the
            ``CanvasAttention`` layers it holds, in module order).  ``plan``: an ``ExecutionPlan``
            instead of the two; one lowered before its layout or topology was changed is refused
            (``SchemaError``, as a canvas layer refuses it): lower it again.
        layers: how many layers the declared pattern composes (default: the number of canvas
            layers in the model, else 1).
        d_model: the input width D (default: the width of the model when it is a canvas layer or
            an ``nn.Sequential`` starting with one, else ``layout.d_model``);
            ``make_input(b, generator)`` draws the ``(b, N, D)`` probe inputs instead of a
            standard normal, for a canvas layer (exactly ``(b, N, layer.d_model)``, on the layer's
            device and dtype) and a model (``(b, N, ...)``); every draw is checked.  Refused for a
            backbone with an installed topology (its attention core is probed on its own inputs).
        max_exact: canvases with at most this many positions are probed at every query position;
            larger ones at ``samples`` sampled positions (stated in the report).
        probes: random restarts (inputs and cotangents) per query; ``chunk``: queries per backward.
        rtol: an input counts as read when its gradient magnitude exceeds ``rtol`` times the
            largest one of the same query.
        seed: seed of every random draw (the report is reproducible).
        require_signal: also fail (``ok`` False) when a declared connection carries no signal at
            all; by default dead links are reported but ``ok`` only says that nothing undeclared
            is read (a type may legitimately read part of its key set: a window, a causal scan).
        progress: ``progress(part, done, total)`` after every chunk of queries probed (``canvas
            verify`` draws a progress line with it): large canvases take minutes.
        as_built: probe the core's reference kernel in the mode the layer built; by default a
            canvas of 1,024 positions or more probes it in its leaner ``segments`` mode (the same
            function; ``verify_guard``); a plugin's kernel is always probed as it is.

    Returns:
        a :class:`StructureReport` (``ok``, ``undeclared``, ``dead``, ``str(report)``, ``to_dict()``).
    """
    from canvas_core.errors import SchemaError
    from canvas_core.runtime.canvas_attention import CanvasAttention

    if not isinstance(model, nn.Module):
        raise CanvasTypeError(f"verify_structure: model must be an nn.Module, got {type(model).__name__}")
    for name, v, lo in (("max_exact", max_exact, 0), ("samples", samples, 1), ("probes", probes, 1), ("chunk", chunk, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise SchemaError(f"verify_structure: {name} must be an integer >= {lo}, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 64:
        raise SchemaError(f"verify_structure: seed must be an integer in [0, 2**64), got {seed!r}")
    if plan is not None:
        from canvas_core.compiler.plan import ExecutionPlan

        if not isinstance(plan, ExecutionPlan):
            raise CanvasTypeError(f"verify_structure: plan must be an ExecutionPlan (lower(topology, layout)), got "
                                  f"{type(plan).__name__}; or pass layout and topology instead")
        from canvas_core.runtime.canvas_attention import plan_stamps

        plan_stamps(plan, "verify_structure")  # a plan lowered before its topology / layout changed: refused
    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or layers < 1):
        raise SchemaError(f"verify_structure: layers must be an integer >= 1, got {layers!r}")
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 <= rtol < 1:
        raise SchemaError(f"verify_structure: rtol must be a number in [0, 1), got {rtol!r}")
    if not isinstance(as_built, bool):
        raise CanvasTypeError(f"verify_structure: as_built must be True or False, got {as_built!r}")
    if not isinstance(require_signal, bool):
        raise CanvasTypeError(f"verify_structure: require_signal must be True or False, got {require_signal!r}")
    if progress is not None and not callable(progress):
        raise CanvasTypeError(f"verify_structure: progress must be callable(part, done, total), got {progress!r}")
    if make_input is not None and not callable(make_input):
        raise CanvasTypeError(f"verify_structure: make_input must be callable(b, generator) -> (b, N, D) tensor, "
                              f"got {make_input!r:.60}")
    _refuse_sequence_parallel(model)
    meta = next((n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta), None)
    if meta is not None:
        raise CanvasTypeError(f"verify_structure: {type(model).__name__}'s tensor {meta!r} is on the meta device (no "
                              "values to probe); materialize it first (to_empty(device=...), then init or load_state_dict)")
    run = _Run(max_exact, samples, probes, chunk, float(rtol), seed, require_signal, progress)
    given = plan is not None or topology is not None
    with _probing(model), lean_kernels(model, as_built), naming_failures(type(model).__name__):
        if isinstance(model, CanvasAttention) and not given:
            _verify_layer(run, model, make_input)
        else:
            blocks = [] if given else _block_topologies(model)
            if blocks and make_input is not None:
                raise CanvasTypeError(
                    f"verify_structure: make_input does not apply to {type(model).__name__}, a backbone with an "
                    "installed topology: its installed attention core is probed on random queries, keys and "
                    "values of the token sequence, not on the model's inputs; call it without make_input")
            if blocks:
                _verify_backbone(run, model, blocks)
            else:
                with naming_failures("model", *_model_runs(model)):
                    _verify_model(run, model, layout, topology, plan, layers, d_model, make_input)
    return run.report()
