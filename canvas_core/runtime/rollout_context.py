"""What a rollout (``canvas_core.incremental``) tells the code that runs inside its steps, through
context variables: which frames of a whole-canvas forward it made itself are output the user asked
for (:func:`frames_measured`), and how to take back what an observer added in a step that then
fails (:func:`undo_if_step_fails`).  Also the parameter fingerprint that ``check=`` compares when a
step differs from the full forward.  Nothing here reads a tensor's values (no host sync)."""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from canvas_core.errors import CanvasError

__all__ = ["frames_measured", "undo_if_step_fails"]

# canonical frames [lo, hi) of a whole-canvas forward that stand for what the user asked: the
# rollout's own forwards set it (check=: none of them; slide="recompute": the window's last frame)
_MEASURED: ContextVar[Optional[Tuple[int, int]]] = ContextVar("canvas_rollout_measured", default=None)
# the step running now: key -> undo, called (newest first) when the step raises
_ATTEMPT: ContextVar[Optional[Dict[Any, Callable[[], None]]]] = ContextVar("canvas_rollout_attempt", default=None)


def frames_measured() -> Optional[Tuple[int, int]]:
    """For observers of whole-canvas updates (telemetry): ``(lo, hi)`` when the forward running
    now is one a rollout makes itself and only its canvas frames ``lo .. hi - 1`` are output the
    user asked for (``(0, 0)``: none, the full forward of ``check=``); None for any other forward."""
    return _MEASURED.get()


@contextlib.contextmanager
def measuring(frames: Tuple[int, int]) -> Iterator[None]:
    token = _MEASURED.set(frames)
    try:
        yield
    finally:
        _MEASURED.reset(token)


def undo_if_step_fails(key: Any, undo: Callable[[], None]) -> None:
    """Inside a rollout step: call ``undo()`` if the step raises (the model fails, or ``check=``
    finds a difference), so that a failed step changes nothing.  The first ``undo`` of each
    ``key`` in a step counts (taken before the step changed anything under that key); outside a
    step this does nothing."""
    pending = _ATTEMPT.get()
    if pending is not None and key not in pending:
        pending[key] = undo


@contextlib.contextmanager
def step_attempt() -> Iterator[None]:
    """One rollout step: the undos registered inside run, newest first, when it raises; when it
    succeeds inside another step (a model that rolls out another), they go on to that step."""
    outer = _ATTEMPT.get()
    pending: Dict[Any, Callable[[], None]] = {}
    token = _ATTEMPT.set(pending)
    try:
        yield
    except BaseException:
        _ATTEMPT.reset(token)
        token = None
        for undo in reversed(list(pending.values())):
            undo()
        raise
    finally:
        if token is not None:
            _ATTEMPT.reset(token)
    if outer is not None:
        for key, undo in pending.items():
            outer.setdefault(key, undo)


def wraps(exc: BaseException) -> bool:
    """Whether a rollout reports ``exc``, raised by the model in a step, as a :class:`RolloutError`
    naming the frame (the original chained): any ``Exception`` (``IndexError`` from a head that
    indexes all N positions, ``AssertionError``, ``RuntimeError`` ...), except errors that already
    name their cause (``CanvasError``) and running out of memory, which pass through unchanged
    (as do ``KeyboardInterrupt`` and ``SystemExit``, which are no ``Exception``)."""
    oom = (MemoryError,) + ((torch.OutOfMemoryError,) if hasattr(torch, "OutOfMemoryError") else ())
    return isinstance(exc, Exception) and not isinstance(exc, (CanvasError,) + oom)


def same_grid(layout: Any, plan_layout: Any) -> bool:
    return (int(plan_layout.T) == int(layout.T)
            and tuple(plan_layout.spatial_shape) == tuple(layout.spatial_shape))


def eager():
    """Inside a step, compiled code (a model given to ``torch.compile`` whole, or compiled blocks)
    runs eagerly: the step builds each frame's plan as it goes, with branches on tensor values that
    dynamo cannot trace (``fullgraph=True`` would stop there).  torch < 2.6 has no stance to set."""
    stance = getattr(torch.compiler, "set_stance", None)
    return stance("force_eager") if stance is not None else contextlib.nullcontext()


def _fingerprint(p: torch.Tensor) -> Tuple[Any, ...]:
    try:
        version = p._version
    except RuntimeError:  # an inference tensor keeps no version counter
        version = None
    return (version, p.data_ptr(), p.dtype, p.device)


def parameter_versions(model: nn.Module) -> Dict[str, Tuple[Any, ...]]:
    """``{name: (version counter, storage, dtype, device)}`` of every parameter of ``model``: what
    an optimizer step, ``load_state_dict`` or ``.to()`` changes (one small tuple per tensor)."""
    return {name: _fingerprint(p) for name, p in model.named_parameters()}


def changed_parameters(model: nn.Module, before: Optional[Dict[str, Tuple[Any, ...]]]) -> List[str]:
    """The names of the parameters of ``model`` written since :func:`parameter_versions` gave
    ``before`` (added or removed ones too); ``[]`` when ``before`` is None."""
    if before is None:
        return []
    now = parameter_versions(model)
    return sorted(n for n in set(now) | set(before) if now.get(n) != before.get(n))
