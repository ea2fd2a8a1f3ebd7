"""A canvas layer's ``kernel=`` and ``kernel_options=`` arguments, read and checked before any
kernel is built: which kernel each softmax-family fn group of the plan runs (the plan's own
resolution unless the caller chose one), a registered kernel name looked up once, and every
malformed choice refused with a :class:`~canvas_core.errors.CanvasError` that names it.  Calling
the chosen kernels once on a small canvas is left to the layer
(:func:`canvas_core.runtime.canvas_attention._probe_choices`)."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

from torch import nn

from canvas_core.compiler.plan import ExecutionPlan
from canvas_core.compiler.resolved import REFERENCE_KERNEL, ResolvedGroup
from canvas_core.errors import CanvasError, CanvasTypeError, CompileError, SchemaError, did_you_mean
from canvas_core.plugins.spec import Spec
from canvas_core.runtime.kernels import REFERENCE_MODES


_KERNEL_FORMS = ("None, a registered kernel name (e.g. 'reference'), a dict fn type -> kernel, or a kernel "
                 "class / factory called as (group, plan, n_heads=, head_dim=, **kernel_options)")


def _kernel_choices(kernel: Any, plan: ExecutionPlan, fused: Tuple[str, ...],
                    where: str = "CanvasAttention") -> Dict[str, Any]:
    """fn type -> what :func:`make_kernel` builds for that softmax-family group.

    ``kernel=None`` takes the plan's resolution of each group; an explicit choice (one for all, or
    a dict per type: a type left out keeps the plan's resolution) wins, a name looked up here,
    once.  One choice on a layer without softmax-family groups runs nothing, but is checked.  A
    registered kernel may run any softmax-family group once its ``supports`` lists one; listing
    none (``mamba_torch``) is a CompileError, as ``compile(kernel=...)`` says."""
    fns = [f for f in plan.groups if f in fused]
    own = {f: plan.groups[f].resolved for f in fns}
    if kernel is None:
        return own
    if isinstance(kernel, Mapping):
        for f in kernel:
            if not isinstance(f, str) or f not in fns:
                raise _unknown_key(f, plan, fns, fused, where)
        checked = given = {f: _kernel_value(k, f"kernel[{f!r}]", where) for f, k in kernel.items()}
    else:
        k = _kernel_value(kernel, "kernel", where)
        given = {f: k for f in fns}
        checked = {fns[0] if fns else None: k}
    for f, k in checked.items():
        if isinstance(k, Spec) and not any(t in fused for t in k.supports):
            raise _unsupported(k, f, plan, fused, where)
    return {**own, **{f: k for f, k in given.items() if k is not None}}  # None: the plan's, as kernel=None


def _unsupported(k: Spec, f: Optional[str], plan: ExecutionPlan, fused: Tuple[str, ...], where: str) -> CanvasError:
    """A kernel running no softmax-family type (``f``: the type chosen for; None: the layer has none)."""
    runs, mine = f"it supports: {', '.join(k.supports) or 'nothing'}", [t for t in k.supports if t in plan.groups]
    if f is not None:
        return CompileError(f"{where}: kernel {k.name!r} does not support fn type {f!r} ({runs}; this layer's "
                            f"kernels run the softmax family {list(fused)}); pick a kernel that supports {f!r}, "
                            "e.g. 'reference', or drop kernel=")
    hint = f"; to run {mine} with it, compile the plan with kernel={k.name!r} and pass that plan" if mine else ""
    return CompileError(f"{where}: kernel {k.name!r} ({runs}) was given as kernel=, which chooses the kernel of "
                        f"a layer's softmax-family types {list(fused)}, and this layer has none{hint}; or drop kernel=")


def _options(options: Any, where: str) -> Dict[str, Any]:
    """``kernel_options`` as a new dict (None: empty); anything but a mapping is refused."""
    if options is not None and not isinstance(options, Mapping):
        raise CanvasTypeError(f"{where}: kernel_options={options!r} ({type(options).__name__}) is not a dict; pass "
                              "a dict of the kernel's keyword arguments, e.g. {'mode': 'sparse', 'block_size': 64}")
    return dict(options or {})


def _kernel_value(k: Any, label: str, where: str) -> Any:
    """One kernel choice, checked: a name looked up (``UnknownNameError`` lists the kernels)."""
    if k is None or isinstance(k, (Spec, ResolvedGroup)):
        return k
    if isinstance(k, str):
        if k in ("auto", REFERENCE_KERNEL, *REFERENCE_MODES):
            return k
        from canvas_core.plugins import get_kernel_spec

        return get_kernel_spec(k)
    if isinstance(k, nn.Module):
        raise CanvasTypeError(f"{where}: {label} is a built module ({type(k).__name__}); pass its class or a "
                              "factory instead: a kernel is built for each fn group of the plan")
    if isinstance(k, bool) or not callable(k):
        raise CanvasTypeError(f"{where}: {label}={k!r} ({type(k).__name__}) is not a kernel; pass {_KERNEL_FORMS}")
    return k


def _unknown_key(key: Any, plan: ExecutionPlan, fns: list, fused: Tuple[str, ...], where: str) -> CanvasError:
    valid = f"its keys must be this layer's softmax-family types: {fns}" if fns else (
        "this layer has no softmax-family type, so drop kernel=")
    if not isinstance(key, str):
        return CanvasTypeError(f"{where}: kernel= dict key {key!r} is not a fn type name; {valid}")
    if key in plan.groups:
        why = f"{key!r} runs its own module, not a kernel (choose its kernel when compiling the plan)"
    elif key in fused:
        why = f"this layer's topology has no {key!r} connection"
    else:
        why = f"{key!r} is no fn type of this layer's topology.{did_you_mean(key, fns or plan.groups)}"
    return SchemaError(f"{where}: kernel= names {key!r}, which no kernel of this layer runs: {why} ({valid})")
