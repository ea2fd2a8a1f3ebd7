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

Every probed part is also checked by value (``verify_values``): a read behind ``.detach()`` has no
gradient, so inputs of one position group at a time are drawn anew and the outputs that may not
read them must stay as they were; such reads are reported with ``by="value"``.

Exact for small canvases (every query position), sampled for large ones (one random query per
(region, frame) cell, then uniform ones; the report says so).
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from canvas_core.errors import CanvasError, CanvasTypeError, ShapeError
from canvas_core.runtime.verify_probe import (  # noqa: F401
    PositionLabels, checked_input, choose_queries, dead_entries, declared_rows, linked_connections, mixes_batch,
    probe_rows, query_cells, undeclared_entries,
)
from canvas_core.runtime.verify_report import DeadLink, StructureReport, UndeclaredDependency  # noqa: F401
from canvas_core.runtime.verify_groups import (
    _candidates, _judge_groups, _model_runs, _module_group, _open_own_gate, _Runs, _silent_fns, _softmax_group,
    _width,
)
from canvas_core.runtime.verify_guard import lean_kernels, naming_failures
from canvas_core.runtime.verify_limits import check_limits
from canvas_core.runtime.verify_run import _Run, _device_dtype, _probing, _randn, output_item, output_items
from canvas_core.runtime.verify_values import value_reads

__all__ = ["verify_structure", "StructureReport"]



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
        entries, bad = undeclared_entries(where, None, whole, allowed, queries, labels, run.rtol,
                                          _candidates([plan]), skip=seen)
        run.undeclared += entries
        value_reads(run, where, None, layer, make, [plan], queries, allowed, labels, skip=seen | bad,
                    candidates=_candidates([plan]))
    run.parts.append(where)



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



def _called_plans(model: nn.Module, make: Callable, gen: torch.Generator,
                  probe_input: bool = True) -> Tuple[List[Any], Tuple[torch.Tensor, Any]]:
    """The plans of the canvas layers ``model`` runs, in the order it runs them (one forward pass
    with hooks: a layer applied twice, e.g. a weight-tied loop, counts twice), and that pass's
    ``(input (1, N, D), output)`` (the value check's reference)."""
    from canvas_core.runtime.canvas_attention import CanvasAttention

    called: List[Any] = []  # layer(x) and layer.delta(x) alike (a forward hook misses .delta)
    hooks = [m.observe_updates(lambda layer, x, active: called.append(layer.plan))
             for m in model.modules() if isinstance(m, CanvasAttention)]
    try:
        with torch.no_grad():
            x = make(1, gen)
            try:
                out = model(x)
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
    return called, (x, out)


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


def _refuse_inapplicable(model: nn.Module, layers: Optional[int], d_model: Optional[int]) -> None:
    """``layers`` / ``d_model`` do not apply to a lone canvas layer (probed exactly, one hop, at its own
    width) nor to a backbone with an installed topology (each block's core on its own token inputs):
    refused, as ``make_input`` is for a backbone, rather than silently ignored.  A layer takes
    ``layers=1`` and its own width (what ``canvas verify`` passes)."""
    from canvas_core.runtime.canvas_attention import CanvasAttention

    name = type(model).__name__
    layer = isinstance(model, CanvasAttention)
    what = (f"{name}, a single canvas layer checked exactly (one hop, each fn group and the whole layer)"
            if layer else f"{name}, a backbone with an installed topology (each block's attention core is probed "
            "on random queries, keys and values of its token sequence)")
    if layers is not None and (layers != 1 or not layer):
        how = ("; to check the L-hop closure, verify the stack (nn.Sequential of L layers) or pass "
               "verify_structure(layer, plan=layer.plan, layers=L)") if layer else ""
        raise CanvasTypeError(f"verify_structure: layers={layers} does not apply to {what}; call it without "
                              f"layers{how}")
    if d_model is not None and (not layer or d_model != model.d_model):
        own = f" (its width is {model.d_model})" if layer else ""
        raise CanvasTypeError(f"verify_structure: d_model={d_model} does not apply to {what}{own}: it is probed "
                              "at its own width; call it without d_model")


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
    called, ref = _called_plans(model, make, run.gen, probe_input=make_input is None)
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
    s = _probe_outputs(run, model, make, plans, queries, allowed, labels, ref)
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


def _probe_outputs(run: _Run, model: nn.Module, make: Callable, plans: List[Any], queries: np.ndarray,
                   allowed: np.ndarray, labels: PositionLabels, ref: Tuple[torch.Tensor, Any]) -> np.ndarray:
    """Probe every per-position item of the model's output (``output_items``: the output itself, or
    each ``(B, N, ...)`` item of a tuple / list, part ``model output[i]``) by gradient and by value;
    returns the ``(nq, N)`` strengths of the items together (the dead-link check's)."""
    n = int(plans[0].n)
    items = output_items(ref[1], n, type(model).__name__, run.notes)
    cells = query_cells(plans, queries, labels.frame)
    union = np.zeros(allowed.shape, dtype=np.float64)
    for i in items:
        # a tuple whose only probed item is the first (an output and a loss, say) keeps the name "model"
        where = "model" if i is None or items == [0] else f"model output[{i}]"
        fn = output_item(model, i)
        s = run.probe(where, fn, make, queries, n, i is None, allowed, cells)
        if i is not None and not s.any():
            run.notes.append(f"{where}: depends on no input position by gradient (detached?); "
                             "only the value check judged it")
        entries, bad = undeclared_entries(where, None, s, allowed, queries, labels, run.rtol, _candidates(plans))
        run.undeclared += entries
        value_reads(run, where, None, fn, make, plans, queries, allowed, labels, skip=bad,
                    candidates=_candidates(plans), ref=(ref[0], ref[1] if i is None else ref[1][i]))
        union = np.maximum(union, s)
        run.parts.append(where)
    if items != [None] and not union.any():
        run.blind = True
        run.notes.append("model: NOT VERIFIED: no item of its output depends on any input position by gradient "
                         "(detached outputs?), so nothing could be measured; verify the model up to the part "
                         "that is differentiable")
    return union


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
            topology; or any module mapping ``(B, N, D)`` canvas states to ``(B, N, D')`` (or to a tuple
            / list: each floating ``(B, N, ...)`` item is probed as part ``model output[i]``, the other
            items are named in a note; an integer or bool output is refused).
        layout, topology: the declared structure of a model (default: the plans of the
            ``CanvasAttention`` layers it holds, in module order).  ``plan``: an ``ExecutionPlan``
            instead of the two; one lowered before its layout or topology was changed is refused
            (``SchemaError``, as a canvas layer refuses it): lower it again.
        layers: how many layers the declared pattern composes (default: the number of canvas
            layers in the model, else 1), at most ``MAX_VERIFY_LAYERS`` (256, as ``canvas verify``).
            ``layers`` and ``d_model`` do not apply to a lone canvas layer (other than 1 and its own
            width) nor to a backbone with an installed topology: refused there.
        d_model: the input width D (default: the width of the model when it is a canvas layer or
            an ``nn.Sequential`` starting with one, else ``layout.d_model``), at most 65,536;
            ``make_input(b, generator)`` draws the ``(b, N, D)`` probe inputs instead of a
            standard normal, for a canvas layer (exactly ``(b, N, layer.d_model)``, on the layer's
            device and dtype) and a model (``(b, N, ...)``); every draw is checked.  Refused for a
            backbone with an installed topology (its attention core is probed on its own inputs).
            Draws must be floating: integer token ids are refused (``CanvasTypeError``), since the
            probe differentiates with respect to the input; verify such a model from its
            embeddings (a module taking the embedded canvas, ``make_input`` returning embeddings).
        max_exact: canvases with at most this many positions are probed at every query position;
            larger ones at ``samples`` sampled positions (stated in the report).
        probes: random restarts (inputs and cotangents) per query, at most ``MAX_VERIFY_PROBES`` (256);
            ``chunk``: queries per backward.
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
    if d_model is not None and (isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1):
        raise SchemaError(f"verify_structure: d_model must be an integer >= 1 (the width D of the probe inputs), "
                          f"got {d_model!r}; leave it out to use the model's own width")
    check_limits(layers, probes, d_model)
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
            _refuse_inapplicable(model, layers, d_model)
            _verify_layer(run, model, make_input)
        else:
            blocks = [] if given else _block_topologies(model)
            if blocks and make_input is not None:
                raise CanvasTypeError(
                    f"verify_structure: make_input does not apply to {type(model).__name__}, a backbone with an "
                    "installed topology: its installed attention core is probed on random queries, keys and "
                    "values of the token sequence, not on the model's inputs; call it without make_input")
            if blocks:
                _refuse_inapplicable(model, layers, d_model)
                _verify_backbone(run, model, blocks)
            else:
                with naming_failures("model", *_model_runs(model)):
                    _verify_model(run, model, layout, topology, plan, layers, d_model, make_input)
    return run.report()
