"""canvas-backend-xformers: canvas attention on ``xformers.ops.memory_efficient_attention``.

Registers the kernel ``xformers`` (priority 10, CUDA only, requires the ``xformers`` package)
for ``cross_attention``.  Without xformers or without CUDA the resolver rejects it and the
compiler's resolution report records why; nothing here imports torch or xformers.
"""

from __future__ import annotations

from canvas_core import hookimpl

__version__ = "0.1.0"
__all__ = ["canvas_register_kernels", "SUPPORTS"]

SUPPORTS = ("cross_attention",)


@hookimpl
def canvas_register_kernels(registry):
    registry.add(
        "xformers", "canvas_backend_xformers.kernel:XFormersKernel",
        supports=SUPPORTS, requires=("xformers",), devices=("cuda",),
        dtypes=("float32", "float16", "bfloat16"), priority=10, family="softmax",
        complexity="O(N^2) memory-efficient (bias tensor N x N)",
        description="xformers memory_efficient_attention with an additive log-w attn_bias built "
        "from the plan",
    )
