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


@hookimpl
def canvas_register_kernels(registry) -> None:
    """Register the ``mamba_ssm`` (CUDA) and ``mamba_torch`` (any device) selective scans."""
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
        "mamba_torch",
        "canvas_plugin_mamba.scan:selective_scan_torch",
        supports=("mamba",),
        priority=0,
        description="pure-PyTorch selective scan (CPU reference, any device)",
    )
