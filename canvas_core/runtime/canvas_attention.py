"""`CanvasAttention`: the layer that executes an :class:`~canvas_core.compiler.plan.ExecutionPlan`.

Semantics (DESIGN.md, "Semantics of a canvas attention layer"), for ``x (B, N, D)`` in canonical order:

* connections are grouped by fn type f (the plan's groups); each group carries its resolution
  (``plan.groups[f].resolved``: attention entry and kernel), from which the layer builds what
  runs -- a plan that was not compiled is resolved once, here, at construction;
* softmax family (``SOFTMAX_FAMILY``: ``cross_attention``, ``self_attention``): shared QKV /
  output projections; each type is ONE kernel call over all its rectangles
  (:func:`canvas_core.runtime.kernels.make_kernel` builds the group's resolved kernel):
  per query p, softmax over the keys ``D_f(p)`` with additive bias ``log w``, times ``beta``
  (inverse temperature, set by ``SharpeningSchedule``) on the logits;
* any other type f: one module built from the group's resolved attention entry
  (:func:`canvas_core.plugins.resolve.build_attention`, with ``kernel=`` when one was resolved)
  reading, for each query p, exactly ``D_f(p)``: called once per shape of key set, the key sets of
  that shape stacked along the batch (``(B*G, Nq_g, D)``, no mask), or, for a type declaring
  ``key_mask_exact``, once with queries = the positions f updates, keys = values = the union of
  f's key positions and ``key_mask (Nq, Nk)`` = linked (``runtime/type_call.py``).
  Such modules see the key *sets*; the per-pair weights are not passed to them (their operators
  are not softmax), only the combination weight ``W_f(p)`` below;
* the layer returns ``sum_f W_f(p) out_f(p) / sum_f W_f(p)`` at every position some connection
  updates (``W_f(p)``: total weight of f's connections that link p to a key) and ``x[p]``
  unchanged elsewhere.  Like canvas-engineering's ``AttentionDispatcher`` it returns the updated
  *state*; for residual stacks, :meth:`CanvasAttention.delta` (or ``returns="delta"``) gives the
  change it makes instead.

``forward(x, active_regions=None)``: only connections whose source region is in the set run (the
plan restricted once per set, the last ``max_restricted`` sets cached); the rest pass through.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from canvas_core.compiler.lowering import lower, restrict
from canvas_core.compiler.plan import ExecutionPlan
from canvas_core.runtime.lru import LRUCache
from canvas_core.compiler.resolution import resolve_plan
from canvas_core.compiler.resolved import REFERENCE_KERNEL, ResolvedGroup
from canvas_core.errors import (AttentionContractError, CanvasError, CanvasTypeError, CompileError, ShapeError,  # noqa: F401
                                SchemaError, UnknownRegionError, did_you_mean)
from canvas_core.plugins.builtin import SOFTMAX_FAMILY
from canvas_core.plugins.resolve import build_attention
from canvas_core.plugins.spec import Spec
from canvas_core.runtime.func_transforms import compile_disabled, forward_ad_math_sdpa
from canvas_core.runtime.kernel_choice import (_KERNEL_FORMS, _kernel_choices, _kernel_value,  # noqa: F401
                                               _options, _unknown_key, _unsupported)
from canvas_core.runtime.kernels import REFERENCE_MODES, probe_kernel  # noqa: F401
from canvas_core.runtime.layer_observers import UPDATE_OBSERVERS, add_observer, add_tables, observers
from canvas_core.runtime.plan_layout import check_plan_layout
from canvas_core.runtime.plan_runner import PlanRunner, mix_softmax_groups, run_module_groups
from canvas_core.runtime.input_checks import (allocating, check_allocation, check_count, check_finite_number,
                                              check_region_names, check_tensor, check_width)
from canvas_core.runtime.type_call import check_attention_module
from canvas_core.runtime.type_dtypes import connection_label, prefixed
from canvas_core.schema.staleness import (check_topology_unchanged, check_topology_unchanged_traced,
                                          check_unchanged, check_unchanged_traced, layout_stamp, topology_stamp)
from canvas_core.runtime.type_probe import (init_gradient_found, init_gradient_problem, is_builtin_module,
                                           probe_attention_module)

__all__ = ["CanvasAttention"]


class _Executor(PlanRunner):
    """Kernels and index buffers of one plan (no parameters): the shared ``PlanRunner``, mixing
    every type by its weight, with one kernel module per softmax-family group (also dense)."""

    def __init__(self, plan: ExecutionPlan, softmax_types: Tuple[str, ...], kernel: Any,
                 n_heads: int, head_dim: int, kernel_options: Dict[str, Any], device: Any = None) -> None:
        soft = [f for f in plan.groups if f in softmax_types]
        kernel_of = kernel if isinstance(kernel, dict) else {f: kernel for f in soft}
        super().__init__(plan, softmax_types, kernel_of, n_heads=n_heads, head_dim=head_dim, normalize="all",
                         kernel_options=kernel_options, device=device, plain_when_full=False, keep_empty=True)


@compile_disabled("CanvasAttention: an active_regions set not prepared builds its executor in Python (a graph "
                  "break); call layer.prepare(<each set>) before compiling with fullgraph=True")
def _build_restricted(layer: "CanvasAttention", key: Any, device: Any) -> "_Executor":
    """``layer``'s executor for the connections whose source is in ``key`` (fullgraph: ``prepare``)."""
    plan = restrict(layer.plan, key)  # same fn types and resolutions, fewer connections
    return _Executor(plan, layer.softmax_types, layer._kernel, layer.n_heads, layer.head_dim, layer._kernel_options, device)


class CanvasAttention(nn.Module):
    """Attention layer executing a canvas plan; see the module docstring for the semantics.

    Args:
        plan_or_topology: an :class:`ExecutionPlan`, or a ``CanvasTopology`` (then ``layout``).
        layout: the ``CanvasLayout`` when a topology is given.  With a plan it may be left out;
            given, it must place positions as the plan's layout does (``SchemaError`` naming what
            differs otherwise: lower the plan from that layout); its ``d_model`` may differ.
        d_model: model width D (default ``layout.d_model``: the layout given, else the plan's).
        n_heads: heads of the softmax family (``d_model`` must divide by it).
        dropout: attention dropout (softmax family) and dropout of the other types' modules.
        kernel: softmax kernel: None (the plan's resolution), "auto"/"reference", "dense",
            "segments", "sparse", a registered kernel name (looked up once, here), a dict fn ->
            choice (a type left out keeps the plan's resolution), or a class/callable ``(group,
            plan, n_heads=, head_dim=, **kernel_options)``; one choice on a layer without a
            softmax-family type runs nothing.  Checked here: a dict's keys must be this layer's
            softmax-family types (``SchemaError``), a registered kernel must list a softmax-family
            type in its ``supports`` (``CompileError``), and every kernel but the reference one is built
            once on a small canvas and called once
            (:func:`~canvas_core.runtime.kernels.probe_kernel`): ``AttentionContractError``
            naming the kernel and the type when it breaks the kernel contract.
            With None, a plan from ``ProgramCompiler`` runs the kernel the compiler chose for
            each type (e.g. ``flex`` on CUDA), and a plan that nobody compiled the reference
            kernel; a non-softmax type with a resolved kernel (e.g. ``mamba_ssm``) gets it as
            its ``kernel=`` argument.
        attention_factory: ``factory(fn, d_model=, n_heads=, dropout=) -> module`` for non-softmax
            types, called with keywords when its signature takes them, else positionally as
            ``factory(fn, d_model, n_heads, dropout)`` (``lambda fn, d, h, p: ...``); one that takes
            neither is refused (``CanvasTypeError``).  Default: build each from the plan's resolved
            attention entry.
        softmax_types: fn types run by the fused softmax kernel.
        beta: inverse temperature on the softmax logits (``SharpeningSchedule`` sets it).
        bias: whether the projections have biases.
        kernel_options: extra keyword arguments for the kernel (e.g. ``block_size``, ``mode``).
        returns: ``"state"`` (default, as canvas-engineering): ``forward`` returns the updated
            state; ``"delta"``: it returns the change (:meth:`delta`), for residual stacks.
    """

    max_restricted: int = 32  #: executors of ``active_regions`` sets kept (least recently used dropped)

    def __init__(self, plan_or_topology: Any, layout: Any = None, d_model: Optional[int] = None,
                 n_heads: int = 8, dropout: float = 0.0, kernel: Any = None, *,
                 attention_factory: Optional[Callable[..., nn.Module]] = None,
                 softmax_types: Iterable[str] = SOFTMAX_FAMILY, beta: float = 1.0, bias: bool = True,
                 kernel_options: Optional[Dict[str, Any]] = None, device: Any = None,
                 returns: str = "state") -> None:
        super().__init__()
        add_tables(self)  # empty observer tables, there before any trace (runtime/layer_observers.py)
        if returns not in ("state", "delta"):
            raise SchemaError(f"{type(self).__name__}: returns must be 'state' or 'delta', got {returns!r}")
        self.returns = returns
        if isinstance(plan_or_topology, ExecutionPlan):
            plan = plan_or_topology
            if layout is not None:  # the plan's indices place its own layout's positions: no other one
                check_plan_layout(plan, layout, type(self).__name__)
            layout = plan.layout if layout is None else layout  # a given one still supplies d_model
        else:
            if layout is None:
                raise CanvasTypeError("CanvasAttention(topology, layout, ...): pass the CanvasLayout "
                                      "with a topology, or pass an ExecutionPlan")
            plan = lower(plan_or_topology, layout)
        if d_model is None:
            d_model = getattr(layout, "d_model", None)
        check_width(where := type(self).__name__, "d_model", d_model)
        check_count(where, "n_heads", n_heads)
        if d_model % n_heads:
            raise SchemaError(f"{where}: d_model={d_model} must be divisible by n_heads={n_heads!r}")
        check_finite_number(where, "dropout", dropout, nonneg=True, maximum=1.0)
        check_allocation(f"{where} qkv projection weight", (3 * d_model, d_model))
        self.softmax_types = tuple(softmax_types)
        if not plan.is_resolved:  # a plan nobody resolved: resolve it here, once (on a copy)
            plan = _resolve_here(plan, self.softmax_types, attention_factory, device)
        self.plan = plan  # its layout and topology as lowered, checked in _updates:
        self._layout_stamp, self._topology_stamp = plan_stamps(plan, where)
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.dropout = float(dropout)
        self.beta = beta  # checked: a finite number >= 0 (see the property)
        self._kernel_options = _options(kernel_options, where)
        self._factory = factory = attention_factory
        # what each softmax-family group runs (kept for the restricted executors of active_regions)
        self._kernel = _kernel_choices(kernel, plan, self.softmax_types, where)
        if kernel is not None:  # a user's choice: one small call of each kernel before it is built
            _probe_choices(self._kernel, where, n_heads, self.head_dim, self._kernel_options, device)
        self.executor = _Executor(plan, self.softmax_types, self._kernel, n_heads, self.head_dim,
                                  self._kernel_options, device)
        self.qkv = self.out_proj = None
        if self.executor.soft_fns:  # an allocator failure (under the element limit) is named, with the size
            with allocating(f"{where} qkv and out_proj projection weights", (4 * d_model, d_model)):
                self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias, device=device)
                self.out_proj = nn.Linear(d_model, d_model, bias=bias, device=device)
        def build(f):
            if attention_factory is not None:
                return _call_factory(attention_factory, f, d_model, n_heads, dropout)
            rg = plan.groups[f].resolved  # chosen at plan build; a softmax kernel is the layer's, not a module's
            kw = {} if f in SOFTMAX_FAMILY else rg.module_kwargs()  # (softmax_types without cross_attention)
            return build_attention(rg.attention, d_model, n_heads=n_heads, dropout=dropout, **kw)

        def checked(f):  # refuse, now, a type the runtime cannot call (contract: runtime/type_call.py)
            by = None if attention_factory is None else f"attention_factory {getattr(factory, '__name__', factory)!r}"
            try:
                module = build(f)
            except CanvasError as exc:  # the registry's error names the type; say which connections use it
                raise prefixed(exc, _connections_of(plan, f)) from exc
            check_attention_module(module, f, by)
            if not is_builtin_module(module):  # one tiny call: output and reads as the contract says
                probe_attention_module(module, f, d_model, _connections_of(plan, f), self.executor)
            return module

        self.fn_modules = nn.ModuleDict({_key(f): checked(f) for f in self.executor.other_fns})
        #: fn -> why its parameters get no gradient at initialisation (only types that cannot learn)
        self.init_gradient_problems: Dict[str, str] = {}
        for f in self.executor.other_fns:
            problem = init_gradient_problem(self.fn_modules[_key(f)], f, d_model, where=_connections_of(plan, f))
            if problem:
                self.init_gradient_problems[f] = problem
                flag_connections(plan, f, f"in a canvas layer: {problem}")
            elif init_gradient_found(self.fn_modules[_key(f)]):
                from canvas_core.compiler.report import disprove_no_gradient

                disprove_no_gradient(plan, f, "in a canvas layer")
        # restricted executors of active_regions, least recently used first (not in the state dict)
        self._restricted: "LRUCache" = LRUCache()  # frozenset of region names -> _Executor

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        add_tables(self)  # a layer pickled before it had observer tables

    @property
    def beta(self) -> float:
        """Inverse temperature on the softmax logits (a finite number >= 0; checked when set)."""
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = check_finite_number(type(self).__name__, "beta", value, nonneg=True)

    @property
    def n_positions(self) -> int:
        return self.plan.n

    def extra_repr(self) -> str:
        return (f"N={self.plan.n}, d_model={self.d_model}, n_heads={self.n_heads}, "
                f"types={list(self.plan.groups)}")

    def _executor_for(self, active_regions: Optional[Iterable[str]], device) -> _Executor:
        if active_regions is None:
            return self.executor
        key = check_region_names(type(self).__name__, "active_regions", active_regions)
        cache = self._restricted
        if type(cache) is not LRUCache:  # a plain dict pickled by an older version
            cache = self._restricted = LRUCache(cache)
        ex = cache.get(key)
        if ex is not None:
            torch.compiler.is_compiling() or cache.touch(key)
            if ex.updated.device != device:
                ex = cache[key] = ex.to(device)  # the module moved since it was built
        else:
            if set(key) - set(self.plan.layout.regions):
                raise UnknownRegionError(f"{type(self).__name__}: active_regions names unknown region(s) "
                                         f"{sorted(set(key) - set(self.plan.layout.regions))}; "
                                         f"regions: {sorted(self.plan.layout.regions)}")
            ex = cache[key] = _build_restricted(self, key, device)
            cache.trim(max(1, int(self.max_restricted)))  # bounded: a scheduler may pick many sets
        return ex

    def prepare(self, *region_sets: Iterable[str]) -> "CanvasAttention":
        """Build the executors of these ``active_regions`` sets now (each is otherwise built on
        the first call that names it).  Under ``torch.compile(fullgraph=True)`` a set the layer
        has not seen stops the trace (its plan is lowered in Python): prepare every set the model
        will use before compiling (sets beyond ``max_restricted`` raise it).  Returns ``self``."""
        device = self.executor.updated.device
        self.max_restricted = max(int(self.max_restricted), len(self._restricted) + len(region_sets))
        for regions in region_sets:
            self._executor_for(regions, device)
        return self

    def forward(self, x: torch.Tensor, active_regions: Optional[Iterable[str]] = None) -> torch.Tensor:
        """``(B, N, D)`` canonical -> ``(B, N, D)``: updated positions replaced, others unchanged
        (``returns="state"``, canvas-engineering's contract), or the change the layer makes,
        zero at positions it does not update (``returns="delta"``, for ``x + layer(norm(x))``)."""
        if self.returns == "delta":
            return self.delta(x, active_regions)
        return self._state(x, active_regions)

    def delta(self, x: torch.Tensor, active_regions: Optional[Iterable[str]] = None) -> torch.Tensor:
        """The change the layer makes, ``(B, N, D)``: ``new_state - x`` where it updates a
        position, exactly 0 elsewhere; whatever ``returns`` says.  For a residual stack::

            h = x + attn.delta(norm(x))      # instead of x + attn(norm(x)) - norm(x)
        """
        acc, ex = self._updates(x, active_regions)
        if acc is None:
            return torch.zeros_like(x)
        d = acc - x
        return d if ex.all_updated else torch.where(ex.updated[None, :, None], d, 0.0)

    def _state(self, x: torch.Tensor, active_regions: Optional[Iterable[str]]) -> torch.Tensor:
        acc, ex = self._updates(x, active_regions)
        if acc is None:
            return x
        if ex.all_updated:
            return acc
        return torch.where(ex.updated[None, :, None], acc, x)

    def observe_updates(self, fn: Callable[["CanvasAttention", torch.Tensor, Any], None]) -> RemovableHandle:
        """Call ``fn(layer, x, active_regions)`` each time the layer computes its update on a whole canvas
        ``x (B, N, D)``, however it is called (``layer(x)``, ``layer.delta(x)``, ``returns="delta"``; a forward
        pre-hook misses ``.delta``); not for a rollout's one-frame steps.  A sequence-parallel wrapper refuses
        to run the layer while it has one.  Code compiled by ``torch.compile`` before it was added recompiles
        at its next call (``runtime/layer_observers.py``).  Telemetry and ``verify_structure`` use it;
        returns a removable handle."""
        return add_observer(self, UPDATE_OBSERVERS, fn)

    def _updates(self, x: torch.Tensor, active_regions: Optional[Iterable[str]]):
        """(new values at the updated positions as a ``(B, N, D)`` tensor, or None when nothing
        runs; the executor that ran)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[1] != self.plan.n or x.shape[2] != self.d_model:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            bad = ShapeError if isinstance(x, torch.Tensor) else CanvasTypeError
            raise bad(f"{type(self).__name__} expects x of shape (B, {self.plan.n}, {self.d_model}) (a torch.Tensor), got {got}")
        check_tensor(type(self).__name__, "x", x, like=next(self.parameters(), None))
        check_plan_unchanged(self, type(self).__name__)
        for observer in observers(self, UPDATE_OBSERVERS):  # compiled: guarded per layer (layer_observers)
            observer(self, x, active_regions)
        ex = self._executor_for(active_regions, x.device)
        B, N, D = x.shape
        acc = None
        if ex.soft_fns:
            qkv = self.qkv(x).reshape(B, N, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # one op (and one stack in backward), not three selects
            with forward_ad_math_sdpa():  # jvp: the fused CPU kernel has no forward derivative
                mixed, bias_weight = self._mix_softmax(ex, q, k, v)
            acc = self.project_out(mixed.transpose(1, 2).reshape(B, N, D), bias_weight)
        other = self._other_types(ex, x, into=acc)  # added into acc (fresh: project_out's output)
        return (acc if other is None else other), ex

    # --- the layer in parts (forward above; runtime/sequence_parallel.py runs them on other shapes)
    def _mix_softmax(self, ex: _Executor, q, k, v):
        """Softmax family on ``(B, h, N, head_dim)`` canonical q/k/v (any number of heads h):
        ``(sum_f c_f(p) kernel_f(q, k, v), bias_weight)``, ``bias_weight`` the ``(N,)`` ``sum_f c_f``
        that scales the output bias, or None when it is 1 everywhere."""
        scale = self.beta / math.sqrt(self.head_dim)
        p = self.dropout if self.training else 0.0
        # the code every path shares (backbone processors too): runtime/plan_runner.py
        return mix_softmax_groups(ex, q, k, v, scale=scale, dropout_p=p)

    def project_out(self, mixed: torch.Tensor, bias_weight: Optional[torch.Tensor]) -> torch.Tensor:
        """Output projection of mixed heads ``(B, n, D)``; ``bias_weight`` ``(n,)`` or None (1)."""
        # sum_f c_f (o_f W^T + b) = (sum_f c_f o_f) W^T + b sum_f c_f
        if bias_weight is None:
            return self.out_proj(mixed)
        out = nn.functional.linear(mixed, self.out_proj.weight)
        if self.out_proj.bias is not None:
            bw = bias_weight if bias_weight.dtype == mixed.dtype else bias_weight.to(mixed.dtype)
            out = out + bw[None, :, None] * self.out_proj.bias
        return out

    def _other_types(self, ex: _Executor, x: torch.Tensor, into: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """``sum_f c_f out_f`` of the non-softmax types on ``x`` (None: no such type), plus ``into``."""
        return run_module_groups(ex, x, {f: self.fn_modules[_key(f)] for f in ex.other_names}, into=into)

    def part_types(self, active_regions: Optional[Iterable[str]] = None) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
        """(softmax-family fn types, other fn types) that run for ``active_regions``."""
        ex = self._executor_for(active_regions, self.executor.updated.device)
        return tuple(ex.soft_fns), tuple(ex.other_names)

    def attend_heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     active_regions: Optional[Iterable[str]] = None):
        """The softmax family on some heads: ``q, k, v`` ``(B, h, N, head_dim)`` canonical (e.g. the
        heads one rank holds under sequence parallelism) -> ``(mixed (B, h, N, head_dim),
        bias_weight (N,) or None)``, or None when no softmax-family connection runs."""
        ex = self._executor_for(active_regions, q.device)
        return self._mix_softmax(ex, q, k, v) if ex.soft_fns else None

    def other_types_output(self, x: torch.Tensor, active_regions: Optional[Iterable[str]] = None):
        """The non-softmax types' weighted sum ``(B, N, D)`` on canonical ``x``, or None."""
        return self._other_types(self._executor_for(active_regions, x.device), x)

    def updated_positions(self, active_regions: Optional[Iterable[str]] = None, device: Any = None):
        """``(N,)`` bool canonical mask of the positions the layer updates, or None when all are."""
        ex = self._executor_for(active_regions, device if device is not None else self.executor.updated.device)
        return None if ex.all_updated else ex.updated

def _call_factory(factory: Callable[..., Any], fn: str, d_model: int, n_heads: int, dropout: float) -> Any:
    """``factory(fn, d_model=, n_heads=, dropout=)`` when its signature binds those keywords, else
    ``factory(fn, d_model, n_heads, dropout)``; neither: ``CanvasTypeError`` naming the factory."""
    import inspect

    kw = dict(d_model=d_model, n_heads=n_heads, dropout=dropout)
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to read (a builtin): the documented keyword call
        return factory(fn, **kw)
    for args, kwargs in (((fn,), kw), ((fn, d_model, n_heads, dropout), {})):
        try:
            sig.bind(*args, **kwargs)
        except TypeError:
            continue
        return factory(*args, **kwargs)
    name = getattr(factory, "__qualname__", None) or repr(factory)
    raise CanvasTypeError(
        f"CanvasAttention: attention_factory {name}{sig} cannot be called with the type {fn!r} as "
        "factory(fn, d_model=, n_heads=, dropout=) nor as factory(fn, d_model, n_heads, dropout); give it "
        "one of those signatures, e.g. lambda fn, d_model, n_heads, dropout: MyType(d_model, n_heads)")


def _resolve_here(plan: ExecutionPlan, fused: Tuple[str, ...], attention_factory: Any, device: Any) -> ExecutionPlan:
    """A resolved copy of a plan that did not go through ``ProgramCompiler``.

    The layer's defaults stay what they always were: the softmax family runs the reference kernel
    and every other type its own module with its own default kernel; so the resolution asks for
    the reference kernel.  Types a user's ``attention_factory`` builds are not looked up."""
    need = [f for f in plan.groups if f in fused or attention_factory is None]
    if not need:
        return plan
    return resolve_plan(plan, device=device, kernel=REFERENCE_KERNEL, requires_grad=False, only=need,
                        kernel_must_apply=False)


def _probe_choices(choices: Dict[str, Any], where: str, n_heads: int, head_dim: int,
                   options: Dict[str, Any], device: Any, dtype: Any = None) -> None:
    """One small call of each kernel a user chose (not the reference kernel, nor a plan's own
    resolution), in ``dtype`` (default: torch's); a kernel that breaks the contract is refused, named."""
    for f, k in choices.items():
        if k is None or isinstance(k, (str, ResolvedGroup)):
            continue
        label = (f"{k.name!r} ({k.describe_provider()})" if isinstance(k, Spec)
                 else repr(getattr(k, "__name__", type(k).__name__)))
        try:
            problem = probe_kernel(k, f, n_heads=n_heads, head_dim=head_dim, device=device, options=options,
                                   dtype=torch.get_default_dtype() if dtype is None else dtype)
        except CanvasError as exc:
            raise prefixed(exc, f"{where}: kernel {label} for fn type {f!r}") from exc
        if problem:
            arg = repr(k.name) if isinstance(k, Spec) else getattr(k, "__name__", "kernel")
            raise AttentionContractError(f"{where}: kernel {label} for fn type {f!r} {problem}. Fix the kernel "
                                         f"(canvas_core.testing.check_kernel({arg}) tests it) or choose "
                                         "another, e.g. kernel='reference'")


def _connections_of(plan: ExecutionPlan, fn: str) -> str:
    conns = plan.topology.connections
    idx = sorted({int(c) for c in plan.groups[fn].conn})
    return connection_label([f"#{i} {conns[i].src!r} -> {conns[i].dst!r}" for i in idx], fn, plural=False)


def flag_connections(plan: ExecutionPlan, fn: str, note: str) -> None:
    """Add ``note`` to the resolution of group ``fn`` of the plan a layer or an installation owns
    (the compile report's notes, shown on every connection of ``fn``), once."""
    group = plan.groups[fn]
    r = group.resolved
    if r is not None and note not in (r.note or ""):
        group.resolved = dataclasses.replace(r, note=f"{r.note}; {note}" if r.note else note)


def _key(fn: str) -> str:
    """ModuleDict keys cannot contain dots."""
    return fn.replace(".", "__")


def plan_stamps(plan: Any, owner: str) -> Tuple[Any, Any]:
    """``(layout stamp, topology stamp)`` for ``owner``, a module being built from ``plan``, to
    record.  A layout or topology changed since the plan was lowered (``plan.layout_stamp`` /
    ``plan.topology_stamp``) is refused here: the plan holds the old indices and connections."""
    now = layout_stamp(plan.layout), topology_stamp(plan.topology)  # first: counts bypassed changes
    what = f"ExecutionPlan given to {owner}"
    check_unchanged(plan.layout, getattr(plan, "layout_stamp", None), what)
    check_topology_unchanged(plan.topology, getattr(plan, "topology_stamp", None), what,
                             f"lower the plan again (lower(topology, layout)) or give {owner} the topology and layout")
    return now  # equal to the plan's, as just checked


def check_plan_unchanged(layer: nn.Module, owner: str) -> None:
    """Refuse ``layer`` (a module holding an execution plan and the stamps of its build) once the
    layout or the topology its plan was lowered from has changed; under ``torch.compile`` without
    a guard per region or connection."""
    traced = torch.compiler.is_compiling()
    (check_unchanged_traced if traced else check_unchanged)(  # traced: no t_current guard
        layer.plan.layout, layer.__dict__.get("_layout_stamp"), owner)
    (check_topology_unchanged_traced if traced else check_topology_unchanged)(
        layer.plan.topology, layer.__dict__.get("_topology_stamp"), owner)
