"""Running under ``torch.func`` transforms and forward-mode AD (docs/limits.md, "torch.func transforms").

* :func:`func_transformed`: a tensor wrapped by a transform (``vmap``, ``grad``, ``jacrev``,
  ``jvp``), where a Python branch on its values is refused.
* :func:`forward_ad_math_sdpa`: torch's fused CPU attention kernel has no forward-mode derivative
  ("Trying to use forward AD with _scaled_dot_product_flash_attention_for_cpu"); under ``jvp`` /
  ``jacfwd`` or inside ``torch.autograd.forward_ad.dual_level`` the softmax attention of a layer
  therefore runs torch's composite (math) kernel, which has one; elsewhere nothing changes.
* :func:`tangent_drops_refused`: a ``torch.library`` custom operator has no forward-mode
  derivative and torch drops the tangent of its outputs without a word (a ``jvp`` through
  mamba's scan returned a wrong tangent); under forward-mode AD such a call is refused instead.
* :func:`compile_disabled`: ``torch.compiler.disable`` with a reason where torch takes one.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, ContextManager, Dict, Tuple

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["func_transformed", "forward_ad_active", "forward_ad_math_sdpa", "tangent_drops_refused", "compile_disabled",
           "in_backward"]


def compile_disabled(reason: str) -> Any:
    """``torch.compiler.disable`` as a decorator, given ``reason`` (shown where ``fullgraph=True``
    refuses the graph break) on torch >= 2.8, whose ``disable`` first took one; without it before."""
    if "reason" in inspect.signature(torch.compiler.disable).parameters:
        return torch.compiler.disable(reason=reason)
    return torch.compiler.disable


def in_backward() -> bool:
    """Whether autograd's backward is running (a checkpointed forward is being recomputed)."""
    task = getattr(torch._C, "_current_graph_task_id", None)  # -1 outside backward
    return task is not None and task() != -1


def func_transformed(t: torch.Tensor) -> bool:
    """``t`` is wrapped by a ``torch.func`` transform (``vmap``, ``grad``, ``jacrev``, ...)."""
    try:
        return bool(torch._C._functorch.is_functorch_wrapped_tensor(t))
    except (AttributeError, TypeError):  # pragma: no cover - a torch without functorch
        return False


def forward_ad_active() -> bool:
    """Forward-mode AD may be recording: a ``jvp`` transform is on the functorch stack, or a
    ``torch.autograd.forward_ad.dual_level`` is open."""
    try:
        stack = torch._C._functorch.get_interpreter_stack() or ()
        if any(i.key() == torch._C._functorch.TransformType.Jvp for i in stack):
            return True
    except AttributeError:  # pragma: no cover - a torch without functorch
        pass
    return getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0


def forward_ad_math_sdpa() -> ContextManager:
    """A context in which ``scaled_dot_product_attention`` uses the math kernel when forward-mode
    AD may be recording (eager only), else a no-op context."""
    if torch.compiler.is_compiling() or not forward_ad_active():
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


#: torch's own operator namespaces: their forward derivatives are torch's (or they raise)
_TORCH_NAMESPACES = frozenset({"aten", "prims"})


def _has_tangent(t: Any) -> bool:
    import torch.autograd.forward_ad as fwAD

    return isinstance(t, torch.Tensor) and t.is_floating_point() and fwAD.unpack_dual(t).tangent is not None


class _TangentDropGuard(TorchFunctionMode):
    """Refuses a custom operator call whose inputs carry a forward-mode tangent and whose floating
    outputs carry none (torch's own operators propagate tangents or raise; custom ones drop them)."""

    def __torch_function__(self, func: Any, types: Any, args: Tuple = (), kwargs: Any = None) -> Any:
        kw: Dict[str, Any] = kwargs or {}
        out = func(*args, **kw)
        if isinstance(func, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)) \
                and str(func).split(".")[0] not in _TORCH_NAMESPACES:
            flat_in = list(args) + list(kw.values())
            flat_out = list(out) if isinstance(out, (tuple, list)) else [out]
            floats = [t for t in flat_out if isinstance(t, torch.Tensor) and t.is_floating_point()]
            if floats and not any(_has_tangent(t) for t in floats) and any(_has_tangent(t) for t in flat_in):
                raise RuntimeError(f"the custom operator {func} has no forward-mode derivative, so torch would "
                                   "drop the tangent of its output silently")
        return out


def tangent_drops_refused() -> ContextManager:
    """A context in which an operator that drops a forward-mode tangent raises a ``RuntimeError``
    (which ``run_type`` turns into an ``UnavailableError`` naming the type) while forward-mode AD
    may be recording (eager only), else a no-op context."""
    if torch.compiler.is_compiling() or not forward_ad_active():
        return contextlib.nullcontext()
    return _TangentDropGuard()
