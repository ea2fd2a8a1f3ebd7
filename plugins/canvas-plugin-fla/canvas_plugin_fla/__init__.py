"""canvas-plugin-fla: flash-linear-attention (``fla``) fast path for the ``rwkv`` attention type.

Registers, through ``canvas_register_kernels``, the kernel ``fla_rwkv`` (supports ``("rwkv",)``,
devices ``("cuda",)``, requires ``("fla", "triton")``): the RWKV-4 WKV recurrence of
``fla.ops.rwkv4.fused_recurrent_rwkv4`` (Triton), the same operator as the core's CPU reference
``canvas_core.extend.wkv_scan``.  Where it cannot run (no CUDA, fla not installed,
an fla without ``ops.rwkv4``), the resolution lists it as rejected with those reasons and the core's
PyTorch scan runs (same math).

``hyena``: flash-linear-attention 0.6 has no FFT long-convolution kernel (its Hyena modules use
``torch.fft`` like the core), so no hyena kernel is registered: the core's reference already
runs cuFFT on CUDA.  ``mamba``'s CUDA kernel comes from ``canvas-plugin-mamba`` (mamba-ssm).
"""

from __future__ import annotations

from typing import Any, List

from canvas_core import hookimpl

__version__ = "0.1.0"
__all__ = ["canvas_register_kernels", "fla_rwkv_check"]


def fla_rwkv_check(ctx: Any = None) -> List[str]:
    """Reasons beyond ``requires`` / ``devices`` why ``fla_rwkv`` cannot run (empty: it can)."""
    import importlib.util

    reasons: List[str] = []
    if importlib.util.find_spec("fla") is not None:
        try:
            importlib.import_module("fla.ops.rwkv4")
        except Exception as exc:  # an fla without the RWKV-4 op, or a broken triton
            reasons.append(f"fla is installed but fla.ops.rwkv4 cannot be imported ({type(exc).__name__}: {exc}); "
                           "install flash-linear-attention>=0.2 with a working triton")
    dtype = getattr(ctx, "dtype_name", None) or str(getattr(ctx, "dtype", "float32"))
    if dtype not in ("float32", "float16", "bfloat16"):
        reasons.append(f"fla's rwkv4 kernel computes in float32/float16/bfloat16, not {dtype}")
    return reasons


@hookimpl
def canvas_register_kernels(registry):
    registry.add(
        "fla_rwkv", "canvas_plugin_fla.kernels:FlaWKV",
        supports=("rwkv",), devices=("cuda",), requires=("fla", "triton"),
        check=fla_rwkv_check, priority=10, family="recurrent",
        description="flash-linear-attention fused recurrent RWKV-4 WKV (Triton, CUDA); same operator "
                    "as the core's PyTorch wkv_scan",
    )
