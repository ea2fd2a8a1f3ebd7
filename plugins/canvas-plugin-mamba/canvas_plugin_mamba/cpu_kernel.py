"""The compiled CPU selective scan (``kernel="mamba_cpu"``): build on first use, load, call.

``csrc/scan_cpu.cpp`` steps through the positions in order carrying the state of 16 channels
(in vector registers as far as it fits), reading it where queries read (no state between two
reads is written to a tensor); its backward recomputes each chunk's states from the state saved at the chunk's start.
It computes what :mod:`canvas_plugin_mamba.chunked` computes, to float rounding (float32: its
``exp2`` is a polynomial within about 1e-7 relative of the exact one, under two float32 ulps;
float64 uses the C library's).

The source is compiled with ``torch.utils.cpp_extension`` the first time a CPU mamba module
runs on a machine (about 15 s; the library is cached under ``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``, in a folder named after the source, canvas-core's shared vector header
``canvas_core/kernels/csrc/cpu_vec.h``, the torch version and the CPU, since it is built for the
CPU it runs on; canvas-core's ``CpuKernel`` does the build).  When no C++ compiler is found or the build
fails, mamba runs the PyTorch scan (same results to rounding, slower) and says so once.

``CANVAS_MAMBA_CPU_KERNEL``: ``auto`` (the default: build and use it when possible), ``0``
(never: the PyTorch scan), ``1`` (required: an error naming the build problem if it cannot be
built).  Building, loading and the setting are canvas-core's :class:`~canvas_core.extend.CpuKernel`
(:data:`KERNEL`); this module adds what is mamba's: the limits, the wording and the operator calls.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Tuple

from canvas_core.extend import CpuKernel, CpuKernelBuildWarning

__all__ = ["ENV", "KERNEL", "MAX_STATE", "MambaKernelBuildWarning", "setting", "static_problem", "unavailable_reason",
           "available", "require", "usable_for", "threaded", "forward", "backward", "conv_forward",
           "conv_backward", "MAX_CONV"]

ENV = "CANVAS_MAMBA_CPU_KERNEL"
#: the largest state size ``N`` the kernel keeps in registers (larger: the PyTorch scan)
MAX_STATE = 64
#: the widest conv the scan computes inside itself (:func:`conv_forward`)
MAX_CONV = 8
_LN2 = math.log(2.0)


class MambaKernelBuildWarning(CpuKernelBuildWarning):
    """The compiled CPU scan could not be built; mamba runs its PyTorch scan instead."""


#: the build of ``csrc/scan_cpu.cpp`` (its setting and outcome; tests reset it with ``KERNEL.reset()``)
KERNEL = CpuKernel(Path(__file__).with_name("csrc") / "scan_cpu.cpp", namespace="canvas_mamba_cpu",
                   probe="scan_read_fwd", env=ENV, label="the compiled CPU scan", owner="canvas-plugin-mamba",
                   fallback="its PyTorch scan (same results, slower)", seconds=15, warning=MambaKernelBuildWarning,
                   what="mamba: kernel='mamba_cpu' (the compiled CPU scan)", instead="use kernel='auto' or 'mamba_torch'")


def setting() -> str:
    """``CANVAS_MAMBA_CPU_KERNEL`` read once: ``"auto"``, ``"off"`` or ``"on"`` (anything else: a
    ``SettingError`` naming it)."""
    return KERNEL.setting()


def static_problem() -> Optional[str]:
    """Why the compiled CPU scan cannot run here, as far as is known without building it (the
    setting, the platform, a missing compiler or ninja, an earlier failed build); None: it should
    build.  Imports nothing heavy, not even torch (the plugin's kernel check calls it while the
    registry is listed)."""
    return KERNEL.static_problem()


def unavailable_reason() -> Optional[str]:
    """Why the compiled CPU scan cannot run here (None: it can).  Builds it on the first call and
    warns once (:class:`MambaKernelBuildWarning`, under ``auto``) when that fails."""
    return KERNEL.unavailable_reason()


def available() -> bool:
    """Whether the compiled CPU scan is built and loaded (builds it on the first call)."""
    return KERNEL.available()


def require() -> None:
    """``UnavailableError`` naming the reason (and ``kernel='mamba_cpu'``) unless the compiled CPU
    scan can run."""
    KERNEL.require()


def threaded() -> bool:
    """Whether the loaded kernel spreads its work items over torch's threads (built with OpenMP)."""
    return KERNEL.threaded()


def usable_for(x, state_size: int) -> bool:
    """Whether ``kernel='auto'`` takes the compiled scan for inputs like ``x`` (CPU, float32 or
    float64, ``state_size <= MAX_STATE``) under the setting, building it if needed."""
    import torch

    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or state_size > MAX_STATE:
        return False
    return KERNEL.wanted()


def _operands(read, L: int, A):
    """What every kernel call takes besides the tensors: ``(rs, rq, A2)``; the queries reading
    position ``t`` are ``rq[rs[t]:rs[t + 1]]`` (``read < 0``: none), ``A2 = A * log2(e)`` laid out
    ``(N, E)``."""
    from canvas_core.extend import reads_by_position

    return (*reads_by_position(read, L), (A.t() / _LN2).contiguous())


def forward(u, delta, A, Bm, C, read, T: int, hs, softplus: bool = False, D=None):
    """``y (Bt, Q, E)`` of the selective scan read at ``read`` (as ``chunked.selective_scan_read``),
    writing the state entering each chunk of ``T`` positions into ``hs`` (``Bt * nC * N * E``
    contiguous elements, ``nC = ceil(L / T)``).  ``softplus``: ``delta`` is the raw step
    projection (``softplus`` is applied inside); ``D (E,)``: adds the skip term ``D u`` at each
    read.  Contiguous inputs in one dtype."""
    import torch

    rs, rq, A2 = _operands(read, u.shape[1], A)
    return torch.ops.canvas_mamba_cpu.scan_read_fwd(u, delta, A2, Bm, C, rs, rq, T, hs, softplus, D)


def backward(gy, u, delta, A, Bm, C, read, T: int, hs, softplus: bool = False, D=None) -> Tuple:
    """Gradients ``(u, delta, A, Bm, C)`` (and ``D`` when given) from ``gy (Bt, Q, E)`` and
    :func:`forward`'s ``hs``; ``delta``'s is the raw input's under ``softplus``."""
    import torch

    rs, rq, A2 = _operands(read, u.shape[1], A)
    gu, gd, gA, gB, gC, gD = torch.ops.canvas_mamba_cpu.scan_read_bwd(gy, u, delta, A2, Bm, C, rs, rq, hs, T,
                                                                      softplus, D)
    grads = (gu, gd, gA.t().contiguous(), gB, gC)
    return grads if D is None else grads + (gD,)


def conv_forward(x, w, bias, delta, A, Bm, C, read, T: int, hs, softplus: bool = False, D=None):
    """:func:`forward` of ``u = silu(causal_depthwise_conv(x, w, bias))`` (``x (Bt, L, E)``,
    ``w (E, K)``, ``K <= MAX_CONV``, ``bias (E,)``) with the conv computed inside the scan: ``u`` is
    never stored."""
    import torch

    rs, rq, A2 = _operands(read, x.shape[1], A)
    return torch.ops.canvas_mamba_cpu.conv_scan_read_fwd(x, w, bias, delta, A2, Bm, C, rs, rq, T, hs, softplus, D)


def conv_backward(gy, x, w, bias, delta, A, Bm, C, read, T: int, hs, softplus: bool = False, D=None) -> Tuple:
    """Gradients ``(x, w, bias, delta, A, Bm, C)`` (and ``D`` when given) of :func:`conv_forward`."""
    import torch

    rs, rq, A2 = _operands(read, x.shape[1], A)
    gx, gw, gb, gd, gA, gB, gC, gD = torch.ops.canvas_mamba_cpu.conv_scan_read_bwd(
        gy, x, w, bias, delta, A2, Bm, C, rs, rq, hs, T, softplus, D)
    grads = (gx, gw, gb, gd, gA.t().contiguous(), gB, gC)
    return grads if D is None else grads + (gD,)
