"""canvas-backend-flex: canvas attention on PyTorch FlexAttention.

Registers two names in the ``kernels`` registry (nothing imported until a kernel is built):

* ``flex`` (priority 20, CUDA): the kernel the resolver prefers on CUDA for softmax attention.
* ``flex_cpu`` (priority -10, CPU, inference only): the same kernel compiled for CPU by
  ``torch.compile``; below the core's ``reference`` kernel (priority 0) so it is used only when
  asked for (``compile(kernel="flex_cpu", requires_grad=False)``), because its first call compiles
  for tens of seconds and FlexAttention has no backward pass on CPU.

Both execute ``cross_attention`` (softmax attention with the ``log w`` connection-weight bias),
exactly the math of the core's reference kernel.  See :mod:`canvas_backend_flex.kernel`.
"""

from __future__ import annotations

import importlib.metadata as _md
import re
from typing import Any, List

from canvas_core import hookimpl

__version__ = "0.1.0"
__all__ = ["canvas_register_kernels", "check", "check_cpu", "SUPPORTS", "MIN_TORCH", "MIN_CUDA_HEAD_DIM"]

#: attention types this kernel executes (softmax with per-pair log-weight bias).
SUPPORTS = ("cross_attention",)
#: first torch release with ``torch.nn.attention.flex_attention`` and ``BlockMask.from_kv_blocks``.
MIN_TORCH = (2, 5)


def _torch_version() -> Any:
    try:
        v = _md.version("torch")
    except _md.PackageNotFoundError:
        return None
    m = re.match(r"(\d+)\.(\d+)", v)
    return (int(m.group(1)), int(m.group(2)), v) if m else (0, 0, v)


#: smallest head width the compiled GPU (Triton) kernel takes: torch's inductor refuses less
#: ("embedding dimension ... must be at least 16", from ``tl.dot``) when the first call compiles
MIN_CUDA_HEAD_DIM = 16


def _device_type(ctx: Any) -> str:
    return str(getattr(ctx, "device", None) or "cpu").split(":")[0]


def _torch_reasons() -> List[str]:
    tv = _torch_version()
    if tv is None:
        return ["needs torch, which is not installed"]
    if tv[:2] < MIN_TORCH:
        return [f"needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} for torch.nn.attention.flex_attention "
                f"(found torch {tv[2]})"]
    return []


def check(ctx: Any) -> List[str]:
    """Reasons FlexAttention cannot run (no torch import: reads the installed torch version), and
    on CUDA a head width below what the compiled kernel takes; on CPU (which the spec's devices
    already refuse) where the same kernel is: ``flex_cpu``."""
    reasons = _torch_reasons()
    if reasons:
        return reasons
    if _device_type(ctx) == "cpu":
        return ["on CPU the same kernel is registered as kernel='flex_cpu' (inference only: pass "
                "requires_grad=False to compile(...) or adapter.install_topology(...); its first call "
                "compiles for tens of seconds)"]
    hd = getattr(ctx, "head_dim", None)
    if _device_type(ctx) == "cuda" and isinstance(hd, int) and hd < MIN_CUDA_HEAD_DIM:
        return [f"FlexAttention's compiled GPU (Triton) kernel needs head_dim >= {MIN_CUDA_HEAD_DIM} (its "
                f"tl.dot), got head_dim={hd}; use heads of at least {MIN_CUDA_HEAD_DIM} channels or "
                "another kernel (e.g. kernel='reference')"]
    return []


def check_cpu(ctx: Any) -> List[str]:
    """The torch version, plus: FlexAttention has no backward pass on CPU (inference only)."""
    reasons = _torch_reasons()
    # only on CPU: for another device the spec's devices=("cpu",) already gives the reason, and
    # "compile ... on CUDA" would contradict it
    on_cpu = _device_type(ctx) == "cpu"
    if not reasons and on_cpu and getattr(ctx, "requires_grad", False):
        tv = _torch_version()
        reasons.append(f"FlexAttention has no backward pass on CPU (torch {tv[2]}); ask for inference "
                       "only (compile(..., requires_grad=False) or adapter.install_topology(..., "
                       "requires_grad=False)) or run on CUDA")
    return reasons


@hookimpl
def canvas_register_kernels(registry):
    common = dict(
        supports=SUPPORTS,
        requires=("torch",),
        dtypes=("float32", "float16", "bfloat16"),
        family="softmax",
        complexity="O(nonempty blocks x block_size^2)",
    )
    registry.add(
        "flex", "canvas_backend_flex.kernel:FlexKernel", devices=("cuda",), priority=20, check=check,
        description="FlexAttention (torch.compile'd Triton kernel): BlockMask from the plan's "
        "block structure + score_mod adding log w", **common,
    )
    registry.add(
        "flex_cpu", "canvas_backend_flex.kernel:FlexKernel", devices=("cpu",), priority=-10,
        check=check_cpu,
        description="FlexAttention compiled for CPU by torch.compile (opt-in: slow first call)",
        **common,
    )
