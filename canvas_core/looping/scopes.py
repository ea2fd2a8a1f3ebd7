"""Loop scopes beyond the block: spans, the stack, the whole model; test-time depth and adaptive
exit for any grafted model (``set_loops``, ``loop_counts``, ``loop_stats``).

``graft_looped_blocks(model, ..., scope=...)`` checks the scope and its options here before the
model is touched, then builds the span (:mod:`canvas_core.looping.span`) or the model loop
(:mod:`canvas_core.looping.model_loop`).
"""

from __future__ import annotations

import difflib
import numbers
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from canvas_core.errors import BackboneError, CanvasTypeError
from canvas_core.looping.loop_engine import (UPDATES, LoopCore, check_exit_tol, check_loops, refuse_replica_record,
                                             warn_clamped)
from canvas_core.looping.model_loop import LOOP_ATTR, STEP_ADAPTERS, ModelLoop, install_model_loop
from canvas_core.looping.span import INJECTIONS, ITER_NORMS, LoopedSpan, SpanMember
from canvas_core.looping.wrapper import LoopedBlockWrapper, _beta_targets

__all__ = ["SCOPES", "parse_scope", "check_scope_options", "graft_span", "graft_model",
           "loop_parts_of", "set_loops", "loop_counts", "loop_stats", "scope_of", "is_grafted"]

SCOPES = ("block", "stack", "model")


def parse_scope(scope: Any, n_blocks: int) -> Tuple[str, Optional[Tuple[int, int]]]:
    """``("block", None)``, ``("span", (i, j))`` (also for ``"stack"``) or ``("model", None)``;
    a :class:`BackboneError` naming ``scope`` and the fix otherwise."""
    if isinstance(scope, str):
        if scope == "block" or scope == "model":
            return scope, None
        if scope == "stack":
            return "span", (0, n_blocks)
        close = difflib.get_close_matches(scope, SCOPES, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise BackboneError(
            f"graft_looped_blocks: unknown scope {scope!r}{hint} Choose 'block', 'stack', 'model' or "
            f"a span (i, j) of block indices (0 <= i < j <= {n_blocks})")
    if isinstance(scope, (tuple, list)) and len(scope) == 2 and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in scope):
        i, j = int(scope[0]), int(scope[1])
        if not 0 <= i < j <= n_blocks:
            what = ("empty" if i == j else "reversed") if j <= i else "outside the model's blocks"
            raise BackboneError(
                f"graft_looped_blocks: scope={tuple(scope)!r} is {what}: the model has {n_blocks} "
                f"blocks, so a span (i, j) loops blocks i..j-1 with 0 <= i < j <= {n_blocks} "
                f"(e.g. scope=(0, {n_blocks}) or scope='stack' for all of them)")
        return "span", (i, j)
    raise BackboneError(
        f"graft_looped_blocks: scope must be 'block', 'stack', 'model' or a pair (i, j) of block "
        f"indices, got {scope!r}")


#: ``graft_looped_blocks``'s default ``damping`` (used by ``update='damped'`` only)
DEFAULT_DAMPING = 0.5


def check_scope_options(kind: str, *, inject: Any, update: Any, damping: Any, iter_norm: Any,
                        iter_embed: Any, reenter: Any, step_adapter: Any, wrapper_class: Any,
                        sharpening: Any, batched_args: Any = None, unbatched_args: Any = None,
                        gate_init_bias: Any = 0.0) -> None:
    """Refuse options that do not exist or do not apply to the scope (before any change)."""
    def bad(arg: str, value: Any, allowed: str) -> BackboneError:
        return BackboneError(f"graft_looped_blocks: {arg}={value!r} {allowed}")

    if inject not in INJECTIONS:
        raise bad("inject", inject, f"is not an injection; choose one of {list(INJECTIONS)}")
    if update not in UPDATES:
        raise bad("update", update, f"is not an update rule; choose one of {list(UPDATES)}")
    if isinstance(damping, bool) or not isinstance(damping, numbers.Real) or not 0 < damping <= 1:
        raise bad("damping", damping, "must be a number in (0, 1] (the fixed step of update='damped')")
    if iter_norm not in ITER_NORMS:
        raise bad("iter_norm", iter_norm, f"is not a norm; choose one of {list(ITER_NORMS)}")
    if not isinstance(iter_embed, bool):
        raise bad("iter_embed", iter_embed, "must be True or False")
    if reenter is not None and not callable(reenter):
        raise bad("reenter", reenter, "must be None or a callable mapping the output to the next input")
    if step_adapter not in STEP_ADAPTERS:
        raise bad("step_adapter", step_adapter, f"is not a step adapter; choose one of {list(STEP_ADAPTERS)}")
    span_only = {"inject": (inject, "none"), "iter_norm": (iter_norm, None), "iter_embed": (iter_embed, True)}
    model_only = {"reenter": (reenter, None), "step_adapter": (step_adapter, None)}
    loop_only = {"update": (update, "gated")}
    checks = []
    if kind != "span":
        checks += [(k, v, d, "applies to span scopes ((i, j) or 'stack')") for k, (v, d) in span_only.items()]
    if kind != "model":
        checks += [(k, v, d, "applies to scope='model'") for k, (v, d) in model_only.items()]
    if kind == "block":
        checks += [(k, v, d, "applies to span and model scopes") for k, (v, d) in loop_only.items()]
    for arg, value, default, where in checks:
        if value != default:
            raise bad(arg, value, f"{where}, not scope={kind!r}; drop it or choose that scope")
    if kind != "block" and wrapper_class is not None:
        raise bad("wrapper_class", wrapper_class, "applies to scope='block' (one wrapper per block)")
    if wrapper_class is not None and (sharpening is not None or gate_init_bias != 0):
        arg, value = ("sharpening", sharpening) if sharpening is not None else ("gate_init_bias", gate_init_bias)
        raise bad(arg, value, f"is applied by canvas-core's LoopedBlockWrapper, and wrapper_class="
                              f"{getattr(wrapper_class, '__name__', wrapper_class)} builds its own loops, so it "
                              "would be ignored; set it in your wrapper, or drop wrapper_class=")
    both = set(check_arg_names("batched_args", batched_args)) & set(
        check_arg_names("unbatched_args", unbatched_args))
    if both:
        raise bad("batched_args", batched_args, f"and unbatched_args={unbatched_args!r} both name "
                                                f"{sorted(both)}; an argument is one or the other")
    if kind == "block" and (batched_args or unbatched_args):
        arg, value = ("batched_args", batched_args) if batched_args else ("unbatched_args", unbatched_args)
        raise bad(arg, value, "tells the adaptive exit of span and model scopes which arguments hold "
                              "one row per sample, and scope='block' has no adaptive exit; drop it")
    if kind == "model" and sharpening is not None:
        raise bad("sharpening", sharpening, "applies to block and span scopes, not scope='model'")
    if update != "gated" and _nonzero(gate_init_bias):
        raise bad("gate_init_bias", gate_init_bias, f"starts the learned gates of update='gated', and "
                                                    f"update={update!r} has none, so it would be ignored; "
                                                    "pass update='gated' or drop gate_init_bias")
    if update != "damped" and damping != DEFAULT_DAMPING:
        raise bad("damping", damping, f"is the fixed step of update='damped', and update={update!r} takes no "
                                      "step; pass update='damped' or drop damping")


def _nonzero(value: Any) -> bool:
    """Whether ``gate_init_bias`` was given as something other than 0 (a 0-d tensor counts by its value)."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    try:
        return bool(value != 0)
    except (TypeError, ValueError, RuntimeError):
        return True


def custom_wrappers(cls: Any, blocks: List[nn.Module], max_loops: int, dim: int) -> List[nn.Module]:
    """The wrappers ``wrapper_class=`` builds, one per block, checked (:func:`_check_custom`)."""
    custom = [_custom_wrapper(cls, b, i, max_loops, dim) for i, b in enumerate(blocks)]
    _check_custom(cls, custom, blocks)
    return custom


def _custom_wrapper(cls: Any, block: nn.Module, i: int, max_loops: int, dim: int) -> nn.Module:
    w = cls(block, i, max_loops, dim)
    if not isinstance(w, nn.Module):
        raise CanvasTypeError(
            f"graft_looped_blocks: wrapper_class={getattr(cls, '__name__', cls)!r} built a "
            f"{type(w).__name__} for block {i}, not an nn.Module; the wrapper takes the block's place "
            "in the model, so it must be a module")
    return w


def _check_custom(cls: Any, custom: List[nn.Module], blocks: List[nn.Module]) -> None:
    """Each ``wrapper_class=`` wrapper must be a new module per block that holds its block: one
    that is the block, is shared by several positions or drops its block would make the graft
    loop nothing, run one block at every position, or lose the backbone's weights (also at
    ``ungraft_looped_blocks``, which puts ``wrapper.original`` back)."""
    name = getattr(cls, "__name__", repr(cls))
    seen: dict = {}
    for i, (w, b) in enumerate(zip(custom, blocks)):
        if w is b:
            why = "the block itself, not a wrapper holding it"
        elif id(w) in seen:
            why = f"the wrapper it built for block {seen[id(w)]}, so one block would run at both positions"
        elif not any(m is b for m in w.modules()):
            why = "a wrapper that does not hold the block, so the backbone's block would be dropped"
        else:
            seen[id(w)] = i
            continue
        raise BackboneError(
            f"graft_looped_blocks: wrapper_class={name} returned, for block {i}, {why}. "
            "wrapper_class(block, idx, max_loops, inner_dim) must build a new module per block that "
            "keeps the block as `original` (ungraft_looped_blocks puts it back)")


def graft_span(model: nn.Module, adapter: Any, blocks: List[nn.Module], span: Tuple[int, int], *,
               max_loops: int, dims: List[int], io: Any, scope_name: str, options: Dict[str, Any]
               ) -> LoopedSpan:
    """Install a :class:`LoopedSpan` over ``blocks[i:j]`` (the checks are done)."""
    i, j = span
    if options.get("sharpening") is not None and not any(_beta_targets(b) for b in blocks[i:j]):
        raise BackboneError(
            f"graft_looped_blocks: sharpening needs attention exposing an inverse temperature `beta` "
            f"in blocks {i}..{j - 1}, and {type(model).__name__}'s have none (adapter "
            f"{getattr(adapter, 'name', adapter)!r} installs no canvas attention there); drop sharpening=")
    members: List[SpanMember] = []
    options = {**dict(zip(("batched", "unbatched"), row_args(adapter))), **options}
    looped = LoopedSpan(blocks[i], members, i, j, max_loops, dims, io, scope_name=scope_name, **options)
    for k in range(i + 1, j):
        members.append(SpanMember(blocks[k], k, looped))
    object.__setattr__(looped, "_members", members)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    looped.to(device)
    adapter.set_block(model, i, looped)
    for m in members:
        adapter.set_block(model, m.block_idx, m)
    object.__setattr__(looped, "_holders", list(adapter.blocks(model)))
    return looped


def check_arg_names(arg: str, value: Any) -> Tuple[str, ...]:
    """``batched_args=`` / ``unbatched_args=`` of ``graft_looped_blocks`` as a tuple of names (a
    single name may be given as a str)."""
    if value is None:
        return ()
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, (tuple, list, set, frozenset)) or not all(
            isinstance(n, str) and n for n in names):
        raise BackboneError(
            f"graft_looped_blocks: {arg}={value!r} must be a name or a tuple of names (str) of the "
            "block's (span scopes) or the model's (scope='model') forward arguments, e.g. ('temb',)")
    return tuple(names)


def row_args(adapter: Any, batched: Tuple[str, ...] = (), unbatched: Tuple[str, ...] = ()
             ) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """The names the adaptive exit splits with the rows and those it passes whole: the adapter's
    ``batched_args`` / ``unbatched_args``, overridden by the ones given to the graft."""
    a_b = set(getattr(adapter, "batched_args", ())) - set(unbatched)
    a_u = set(getattr(adapter, "unbatched_args", ("image_rotary_emb",))) - set(batched)
    return tuple(sorted(a_b | set(batched))), tuple(sorted(a_u | set(unbatched)))


def graft_model(model: nn.Module, adapter: Any, *, max_loops: int, step: Tuple[str, int, Optional[int]],
                options: Dict[str, Any]) -> ModelLoop:
    """Install a :class:`ModelLoop` on ``model`` (the checks are done)."""
    name, cdim, channels = step
    options = {**dict(zip(("batched", "unbatched"), row_args(adapter))), **options}
    loop = ModelLoop(max_loops, name, cdim, channels, **options)
    try:
        ref = next(model.parameters())
        loop.to(device=ref.device)
    except StopIteration:
        pass
    install_model_loop(model, loop, list(adapter.blocks(model)))
    return loop


def model_step_input(model: nn.Module, adapter: Any, latent_channels: Optional[int],
                     step_adapter: Any) -> Tuple[str, int, Optional[int]]:
    """Ask the adapter how the model's output re-enters (refusal names ``scope='model'``)."""
    fn = getattr(adapter, "step_input", None)
    if fn is None:
        raise BackboneError(
            f"graft_looped_blocks: scope='model' needs to know how {type(model).__name__}'s output "
            f"re-enters as its input, and adapter {getattr(adapter, 'name', adapter)!r} does not say "
            "(no step_input()); use a span scope (i, j) or 'stack'")
    name, cdim, channels = fn(model)
    if step_adapter is not None and channels is None:
        if latent_channels is None:
            raise BackboneError(
                f"graft_looped_blocks: step_adapter={step_adapter!r} needs the channel count of "
                f"{type(model).__name__}'s input; pass latent_channels=")
        channels = latent_channels
    if getattr(model, LOOP_ATTR, None) is not None:
        raise BackboneError(
            f"{type(model).__name__} already has an attribute {LOOP_ATTR!r}; scope='model' stores "
            "its loop there. Graft a fresh model")
    return name, cdim, channels


# --- model-level controls ------------------------------------------------------------------------
#: set on each wrapper a ``wrapper_class=`` built, so the model-level controls find it
PART_MARK = "_canvas_loop_part"
#: the graft record ``graft_looped_blocks`` leaves on a model (``ungraft_looped_blocks`` removes it)
_GRAFT_RECORD = "_canvas_backbone_adapter"


def is_part(module: nn.Module) -> bool:
    """A looped part: canvas-core's own, or a wrapper built by ``wrapper_class=``."""
    return isinstance(module, (LoopedBlockWrapper, LoopCore)) or module.__dict__.get(PART_MARK) is True


def loop_parts_of(model: nn.Module) -> List[nn.Module]:
    """Every looped part of ``model``: ``LoopedBlockWrapper`` (block scope, or the wrappers of a
    ``wrapper_class=``), ``LoopedSpan`` (span scopes) and ``ModelLoop`` (model scope), in module
    order."""
    if not isinstance(model, nn.Module):
        raise CanvasTypeError(f"expected a grafted torch nn.Module, got {type(model).__name__}")
    return [m for m in model.modules() if is_part(m)]


def part_loop_parameters(part: nn.Module) -> List[nn.Parameter]:
    """The loop parameters of a part: its ``loop_parameters()``, or for a custom wrapper without
    one, its parameters that are not its ``original`` block's."""
    fn = getattr(part, "loop_parameters", None)
    if callable(fn):
        return list(fn())
    inner = getattr(part, "original", None)
    skip = {id(p) for p in inner.parameters()} if isinstance(inner, nn.Module) else set()
    return [p for p in part.parameters() if id(p) not in skip]


def is_grafted(model: nn.Module, blocks: List[nn.Module]) -> bool:
    """True when ``graft_looped_blocks`` ran on ``model`` (its record is there) or a block already
    is a looped part."""
    return (model.__dict__.get(_GRAFT_RECORD) is not None
            or any(isinstance(b, (SpanMember, LoopedSpan)) or is_part(b) for b in blocks)
            or isinstance(model._modules.get(LOOP_ATTR), ModelLoop))


def scope_of(model: nn.Module) -> Any:
    """``"block"``, ``(i, j)`` or ``"model"``: the scope ``model`` was grafted with."""
    parts = _parts(model, "scope_of")
    p = parts[0]
    if isinstance(p, LoopedSpan):
        return (p.start, p.end)
    if not isinstance(p, LoopCore):  # canvas-core's block wrapper or a wrapper_class= one
        return "block"
    return "model"


def _parts(model: nn.Module, where: str) -> List[nn.Module]:
    parts = loop_parts_of(model)
    if not parts:
        raise BackboneError(
            f"{where}: {type(model).__name__} has no looped part; graft it first "
            "(graft_looped_blocks(model, ..., scope=...))")
    return parts


def set_loops(model: nn.Module, n: int, exit_tol: float = 0.0) -> int:
    """Set the iteration count of every looped part of ``model`` (any scope); returns ``n``.

    Span and model scopes run exactly ``n`` iterations, also more than the ``max_loops`` they were
    grafted (trained) with: iteration ``t >= max_loops`` reuses the last iteration embedding
    ``e_{max_loops-1}`` and the last gate ``a_{max_loops-1}``. The block scope keeps its rule
    (``n`` is clamped to each block's ``max_loops``); the wrappers of a ``wrapper_class=`` get
    ``set_loops(n)`` and apply their own rule.

    ``exit_tol > 0`` (span and model scopes): each sample stops once the relative change of the
    loop state between two iterations is below ``exit_tol`` (at most ``n`` iterations); finished
    samples are not computed again. ``exit_tol = 0`` is fixed depth. Bad values raise
    :class:`BackboneError` and change nothing."""
    n = check_loops(n, "set_loops")
    tol = check_exit_tol(exit_tol, "set_loops")
    parts = _parts(model, "set_loops")
    setters = [getattr(p, "set_loops", None) for p in parts]
    for p, fn in zip(parts, setters):
        if not callable(fn):  # model unchanged
            raise CanvasTypeError(
                f"set_loops: looped block {type(p).__name__} (a wrapper_class= wrapper) has no "
                "set_loops(n) method; give your wrapper one")
    if tol > 0 and any(not isinstance(p, LoopCore) for p in parts):  # model unchanged
        raise BackboneError(
            f"set_loops: exit_tol={exit_tol!r} needs a span, stack or model scope (the block scope loops "
            "each block on its own, so there is no single state to watch); graft with scope=(i, j), "
            "'stack' or 'model', or pass exit_tol=0")
    apply_loops_atomically(parts, lambda p: p.set_loops(n, tol) if isinstance(p, LoopCore) else p.set_loops(n))
    warn_clamped(n, [p.max_loops for p in parts if isinstance(p, LoopedBlockWrapper) and p.current_loops < n])
    return n


def _own_setter(part: nn.Module) -> bool:
    """Whether ``part.set_loops`` is canvas-core's own, which only writes the counts it keeps."""
    fn = getattr(type(part), "set_loops", None)
    return fn is LoopedBlockWrapper.set_loops or fn is LoopCore.set_loops


_LOOP_SETTINGS = ("current_loops", "exit_tol")


def apply_loops_atomically(parts: List[Any], apply: Any) -> None:
    """``apply(part)`` for every part, all or nothing: when one raises (a ``wrapper_class=``
    wrapper's own ``set_loops``), the parts already set, and the failing one, get back what they
    held, and the error is raised as it came. canvas-core's parts only save their counts; another
    module saves the state of its own modules (``module_state``: each one's ``__dict__``, the dicts
    in it one level deep) and its parameters' ``requires_grad``, but not of the wrapped block
    (``original`` / ``ungraft_blocks()``), which a ``set_loops`` has no business changing and
    whose copy cost milliseconds per call on a large block; another object its own attributes."""
    from canvas_core.looping.graft_atomic import rollback, snapshot

    done: List[Tuple[Any, str, Any]] = []
    try:
        for p in parts:
            if isinstance(p, nn.Module) and _own_setter(p):
                done.append((p, "own", {k: p.__dict__[k] for k in _LOOP_SETTINGS if k in p.__dict__}))
            elif isinstance(p, nn.Module):
                done.append((p, "module", snapshot(p, skip=wrapped_blocks(p))))
            else:
                done.append((p, "object", dict(getattr(p, "__dict__", {}))))
            apply(p)
    except BaseException:
        for p, kind, saved in reversed(done):
            if kind == "own":
                p.__dict__.update(saved)
            elif kind == "module":
                rollback(p, None, saved)
            elif hasattr(p, "__dict__") and p.__dict__ != saved:
                p.__dict__.clear()
                p.__dict__.update(saved)
        raise


def wrapped_blocks(part: nn.Module) -> List[Any]:
    """The backbone block(s) a looped part stands for: ``ungraft_blocks()`` when it offers it, else
    its ``original`` (a block wrapper, a span's first block, a span member), else none."""
    if callable(getattr(part, "ungraft_blocks", None)):
        return list(part.ungraft_blocks())
    return [part.original] if isinstance(getattr(part, "original", None), nn.Module) else []


def _block_trace(model: nn.Module, where: str) -> Tuple[List[Dict[str, Any]], List[int]]:
    """The records of the blocks the last forward ran, and the indices of those it did not run."""
    parts = _parts(model, where)
    custom = [p for p in parts if not isinstance(p, (LoopedBlockWrapper, LoopCore))]
    if custom:
        raise CanvasTypeError(
            f"{where}: the looped blocks of {type(model).__name__} are {type(custom[0]).__name__} "
            f"(wrapper_class=), which keep no record of what a forward ran; {where} reads the one "
            "canvas-core's LoopedBlockWrapper keeps. Read the blocks' own state (e.g. current_loops)")
    wrappers = [p for p in parts if isinstance(p, LoopedBlockWrapper)]
    for p in wrappers:
        refuse_replica_record(p, "_loop_trace", where, type(model).__name__)
    traces = [getattr(p, "_loop_trace", None) for p in wrappers]
    if not traces or all(t is None for t in traces):
        raise _nothing_run(model, where, "none of its looped blocks")
    stamps = [t.get("forward") if t is not None else -1 for t in traces]
    # a compiled forward's records carry no stamp: the model's forward hook dropped the older ones
    last = None if any(st is None for st in stamps) else max(stamps)
    keep = [t is not None and (last is None or st == last) for t, st in zip(traces, stamps)]
    return ([t for t, k in zip(traces, keep) if k], [p.block_idx for p, k in zip(wrappers, keep) if not k])


def _nothing_run(model: nn.Module, where: str, what: str) -> CanvasTypeError:
    """The error for a model whose last forward ran ``what`` (or that has not run a forward)."""
    from canvas_core.runtime.compiled_names import unwrap_model

    return CanvasTypeError(
        f"{where}: the last forward of {type(unwrap_model(model)).__name__} ran {what} (or no forward has run yet), "
        f"so there is nothing of it to report; call the model on an input that runs them, then "
        f"{where}(model)")


def _core(model: nn.Module, cores: List[Any], where: str) -> Any:
    """The span's or model loop's core, refused when the model's last forward did not run it."""
    core = cores[0]
    refuse_replica_record(core, "_stats", where)
    if core._stats is None:
        raise _nothing_run(model, where, f"no iteration of its looped span {core.loop_scope}"
                           if isinstance(core, LoopedSpan) else "no iteration of its model loop")
    return core


def loop_counts(model: nn.Module) -> torch.Tensor:
    """``(B,)`` long tensor: the iterations each sample of the last forward used (for the block
    scope, the loops every block ran: the same for every sample)."""
    parts = _parts(model, "loop_counts")
    cores = [p for p in parts if isinstance(p, LoopCore)]
    if cores:
        return _core(model, cores, "loop_counts").counts()
    traces, _ = _block_trace(model, "loop_counts")
    return traces[0]["counts"].detach().cpu().clone()


def loop_stats(model: nn.Module) -> Dict[str, Any]:
    """Diagnostics of the last forward: ``scope``, ``loops`` (the set count), ``exit_tol``,
    ``iterations`` (run), ``rel_change`` (per iteration, mean over the computed samples of
    ``||h_t - h_{t-1}|| / ||h_{t-1}||``; iteration 0 compares with the core's input),
    ``state_norm`` (per iteration, mean RMS of the first stream's state), ``active`` (samples
    computed per iteration) and ``core_rows`` (their sum: the core's work in sample-iterations).
    For the block scope the lists are means over the blocks the last forward ran, ``per_block``
    holds each of those blocks' ``rel_change`` / ``state_norm`` (in block order) and
    ``blocks_not_run`` the indices of the looped blocks it did not run. A forward starts when the
    model is called (the forward hooks of ``looping/ungraft.py``; not a checkpoint's recompute in
    backward); outside a call (``model.forward_features(x)``) a block running again or a
    lower-index block starts one (:class:`~canvas_core.looping.wrapper.ForwardMark`). A span
    or model loop the last forward did not run is refused (``CanvasTypeError``)."""
    parts = _parts(model, "loop_stats")
    cores = [p for p in parts if isinstance(p, LoopCore)]
    if cores:
        return _core(model, cores, "loop_stats").stats()
    traces, skipped = _block_trace(model, "loop_stats")
    per_block = [{k: [float(v) for v in t[k]] for k in ("rel_change", "state_norm")} for t in traces]
    its = min(len(b["rel_change"]) for b in per_block)
    mean = {k: [sum(b[k][i] for b in per_block) / len(per_block) for i in range(its)]
            for k in ("rel_change", "state_norm")}
    B = int(traces[0]["counts"].shape[0])
    loops = max(len(t["rel_change"]) for t in traces)  # what the last forward ran, as the cores report
    return {"scope": "block", "loops": loops, "exit_tol": 0.0,
            "iterations": its, **mean, "active": [B] * its, "core_rows": B * its, "per_block": per_block,
            "blocks_not_run": skipped}
