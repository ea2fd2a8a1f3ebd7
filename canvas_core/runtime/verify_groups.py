"""The fn groups of a canvas layer or an installed topology, probed one at a time for
:func:`~canvas_core.runtime.verify.verify_structure`: each group's output alone (a softmax kernel on
the layer's projections, a type's module on its linked sets), judged against that group's declared
pattern by gradient (:func:`~canvas_core.runtime.verify_probe.probe_rows`) and by value
(:func:`~canvas_core.runtime.verify_values.value_reads`); the closed gates opened for the probe, the
groups that output 0 whatever their input, and the fn candidates of a whole-output read."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from canvas_core.runtime.verify_guard import check_finite, naming_failures
from canvas_core.runtime.verify_probe import (
    PositionLabels, dead_entries, declared_rows, linked_connections, query_cells, undeclared_entries,
)
from canvas_core.runtime.verify_run import _Run, _device_dtype, _randn
from canvas_core.runtime.verify_values import value_reads


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
        with naming_failures(f"{where} fn {f!r}", plan, runs.modules, runs.kernels.get(f, "")):
            bad |= value_reads(run, where, f, fn, make, [plan], queries, allowed, labels, skip=bad)
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

def _candidates(plans: Sequence[Any]) -> Callable[[int], Tuple[str, ...]]:
    def of(q: int) -> Tuple[str, ...]:
        found: List[str] = []
        for plan in plans:
            for f, w in plan.query_weight.items():
                if w[plan.inv_perm[q]] > 0 and f not in found:
                    found.append(f)
        return tuple(found)
    return of

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
