"""Refusing an attention type that writes into the tensors it is given (split from ``type_probe``).

:func:`refuse_in_place` watches every call of a module inside its block: the version counters of
the tensors the call gets, and a copy of their values (a write through ``.data`` or a detached
alias, or ``tensor.data = other``, moves no version counter but still changes what the caller and
autograd's saved tensors hold).  :func:`in_place_error` is the error both say it with.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from canvas_core.errors import AttentionContractError

__all__ = ["refuse_in_place", "in_place_error", "autograd_in_place", "said_in_place"]

#: autograd's messages for an in-place write it cannot differentiate: into a tensor saved for the
#: backward pass, and into a leaf that requires grad (the probe's inputs are such leaves).
_AUTOGRAD_IN_PLACE = ("modified by an inplace operation", "used in an in-place operation")
_INPUT_LABELS = ("queries", "keys", "values")
_FIX_IN_PLACE = ("A type must not write into the tensors it is given (they may be shared with other "
                 "connections and saved for the backward pass): compute on a copy instead "
                 "(values = values * 2 rather than values.mul_(2), or clone() first)")
_guarded = threading.local()  # ids of the modules a refuse_in_place block is watching, per thread


def in_place_error(module: Any, fn: Any = None, where: Optional[str] = None, written: Sequence[str] = (),
                   cause: Optional[BaseException] = None, hidden: bool = False) -> Exception:
    """The ``AttentionContractError`` for a type that modifies its inputs in place: ``written`` names
    the inputs seen to change; without them, ``cause`` is autograd's error about a saved tensor.
    ``module`` None: the type is not known here (the caller's report names it).  ``hidden``: a write
    seen by value only (through ``.data`` or a detached alias), which autograd cannot notice."""
    cls = type(module).__name__
    who = ("the attention type" if module is None else
           f"attention type {fn!r} ({cls})" if fn is not None else f"attention type {cls}")
    if written:
        what = f"modifies its input{'s' if len(written) > 1 else ''} {', '.join(written)} in place during forward"
        if hidden:
            what += (" (through .data or a detached alias: no version counter moves, so autograd would "
                     "compute wrong gradients without an error)")
    else:
        said = (str(cause).strip().splitlines() or [""])[0][:160]
        what = ("modifies in place a tensor autograd tracks, typically one of its inputs (queries, keys, "
                f"values), so its gradient cannot be computed (torch: {said})")
    return AttentionContractError(f"{where + ': ' if where else ''}{who} {what}. {_FIX_IN_PLACE}")


def autograd_in_place(exc: Optional[BaseException]) -> Optional[BaseException]:
    """Autograd's "modified by an inplace operation" error in ``exc`` or what caused it, else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, RuntimeError) and any(m in str(exc) for m in _AUTOGRAD_IN_PLACE):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def said_in_place() -> Iterator[None]:
    """Autograd's bare in-place error, raised in the block, as :func:`in_place_error`."""
    try:
        yield
    except RuntimeError as exc:
        if autograd_in_place(exc) is exc:
            raise in_place_error(None, cause=exc) from exc
        raise


def _tensors(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> List[Tuple[str, Any]]:
    named = [(repr(_INPUT_LABELS[i]) if i < 3 else f"argument {i}", a) for i, a in enumerate(args)]
    named += [(repr(k), v) for k, v in kwargs.items()]
    return [(label, t) for label, t in named if isinstance(t, torch.Tensor)]


def _snapshot(t: Any) -> Any:
    """A copy of ``t``'s values (None for a tensor without storage to compare: meta, sparse)."""
    if t.is_meta or t.layout != torch.strided:
        return None
    return t.detach().clone()


def _unchanged(t: Any, copy: Any) -> bool:
    """Whether ``t`` still holds ``copy``'s values, bit for bit as far as NaN allows (a write through
    ``.data`` or ``.detach()``, or ``t.data = other``, moves no version counter)."""
    if copy is None:
        return True
    now = t.detach()
    if now.shape != copy.shape or now.dtype != copy.dtype or now.device != copy.device:
        return False
    if now.is_floating_point() or now.is_complex():
        return bool(torch.equal(now, copy) or torch.allclose(now, copy, rtol=0.0, atol=0.0, equal_nan=True))
    return bool(torch.equal(now, copy))


@contextlib.contextmanager
def refuse_in_place(module: Any, fn: Any = None, where: Optional[str] = None) -> Iterator[None]:
    """Within the block, every call of ``module`` notes the version counters and the values of the
    tensors it is given and compares them when it returns.  On leaving, a written input raises
    :func:`in_place_error`; so does (with the cause chained) an exception of the block raised while
    an input had been written, or autograd's "modified by an inplace operation".  Nested blocks for
    one module watch once (the outermost, which knows the connection, reports)."""
    active = _guarded.__dict__.setdefault("ids", set())
    if id(module) in active:
        yield
        return
    written: List[str] = []
    hidden: List[str] = []
    pending: List[List[Tuple[str, Any, int]]] = []

    def before(_mod: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        pending.append([(label, t, t._version, _snapshot(t)) for label, t in _tensors(args, kwargs)])

    def after(_mod: Any, _args: Any, _kwargs: Any, _out: Any) -> None:
        seen = pending.pop() if pending else []
        for label, t, version, copy in seen:
            if t._version == version and not _unchanged(t, copy):
                hidden.append(label)  # a write the version counter missed: autograd cannot notice it
            if (t._version != version or label in hidden) and label not in written:
                written.append(label)

    handles: List[Any] = []
    try:  # a module that takes no hooks (a scripted one) is judged by autograd's error alone
        handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(module.register_forward_hook(after, with_kwargs=True))
    except Exception:
        while handles:
            handles.pop().remove()
    active.add(id(module))
    try:
        yield
    except Exception as exc:
        cause = autograd_in_place(exc)
        if written or cause is not None:
            raise in_place_error(module, fn, where, written, cause, bool(hidden)) from exc
        raise
    finally:
        active.discard(id(module))
        for h in handles:
            h.remove()
    if written:
        raise in_place_error(module, fn, where, written, hidden=bool(hidden))

