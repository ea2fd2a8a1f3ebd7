"""Hook implementations of canvas-plugin-mamba (entry point ``mamba`` in group ``canvas``).

Registering imports neither torch nor mamba-ssm: factories are lazy strings.
"""

from __future__ import annotations

from canvas_core import hookimpl

__all__ = ["canvas_register_attention", "canvas_register_kernels"]


@hookimpl
def canvas_register_attention(registry) -> None:
    """Register the ``mamba`` attention type."""
    registry.add(
        "mamba",
        "canvas_plugin_mamba.module:MambaAttention",
        family="State-space",
        complexity="O(N)",
        description="Selective state-space model (S6, Mamba): input-dependent delta, B, C over the "
        "key/value sequence, causal; queries read the state with their own C and SiLU gate.",
    )


def _cpu_kernel_problems(ctx) -> list:
    """Why the compiled CPU scan cannot run (empty: it can).  What is known without a compiler
    run (the setting, no compiler or ninja, a missing source) is said at once.  In a process that
    has imported torch (compiling a program, building modules) the kernel is then built (once per
    machine, later a load from its cache), so that a program resolved to it never meets a failed
    build when it runs; a listing without torch (``canvas plugins``) stays free of torch and of
    the build."""
    import sys

    from canvas_plugin_mamba import cpu_kernel

    problem = cpu_kernel.static_problem()
    if problem is None and "torch" in sys.modules:
        problem = cpu_kernel.unavailable_reason()
    return [problem] if problem else []


@hookimpl
def canvas_register_kernels(registry) -> None:
    """Register the ``mamba_ssm`` (CUDA), ``mamba_cpu`` (compiled CPU) and ``mamba_torch`` (any
    device) selective scans."""
    registry.add(
        "mamba_ssm",
        "canvas_plugin_mamba.scan:selective_scan_mamba_ssm",
        supports=("mamba",),
        requires=("mamba_ssm",),
        devices=("cuda",),
        priority=10,
        description="mamba-ssm's fused CUDA selective_scan_fn",
    )
    registry.add(
        "mamba_cpu",
        "canvas_plugin_mamba.chunked:selective_scan_read",
        supports=("mamba",),
        devices=("cpu",),
        check=_cpu_kernel_problems,
        priority=5,
        description="compiled CPU selective scan (built once per machine with its C++ compiler)",
    )
    registry.add(
        "mamba_torch",
        "canvas_plugin_mamba.scan:selective_scan_torch",
        supports=("mamba",),
        priority=0,
        description="pure-PyTorch selective scan (CPU reference, any device)",
    )
