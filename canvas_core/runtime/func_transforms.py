"""Running under ``torch.func`` transforms and forward-mode AD (docs/limits.md, "torch.func transforms").

* :func:`func_transformed`: a tensor wrapped by a transform (``vmap``, ``grad``, ``jacrev``,
  ``jvp``), where a Python branch on its values is refused.
* :func:`forward_ad_math_sdpa`: torch's fused CPU attention kernel has no forward-mode derivative
  ("Trying to use forward AD with _scaled_dot_product_flash_attention_for_cpu"); under ``jvp`` /
  ``jacfwd`` or inside ``torch.autograd.forward_ad.dual_level`` the softmax attention of a layer
  therefore runs torch's composite (math) kernel, which has one; elsewhere nothing changes.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

__all__ = ["func_transformed", "forward_ad_active", "forward_ad_math_sdpa"]


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
