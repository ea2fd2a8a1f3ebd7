"""rwkv's compiled CPU WKV read (``csrc/wkv_cpu.cpp``): the kernel ``kernel="auto"`` takes on CPU.

The kernel steps through the keys of each (batch row, block of 16 channels) in order, in the
log-space form of the RWKV-4 recurrence (one ``exp`` per key), and writes the WKV where queries
read; it saves the state at the start of every chunk of :data:`CHUNK` keys, and its backward
recomputes a chunk's states from there while carrying the state's adjoint back through them
(``dk, dv, dw, du``).  It computes what :func:`canvas_core.attention.rwkv.wkv_read` computes, to
float rounding: its sums, exponents and adjoints are carried in float64 for either dtype (a
float32 recurrence gathers one rounding per key into sums that barely decay), and only its ``exp``
follows the inputs (float32: a polynomial within about 1e-7 relative; float64: the C library's).
It is built on first use (:class:`canvas_core.kernels.cpu_build.CpuKernel`).

``CANVAS_RWKV_CPU_KERNEL``: ``auto`` (default: build and use it where it applies), ``0`` (never:
the PyTorch path), ``1`` (required: an error naming the build problem when it cannot be built).
It applies to CPU float32 inputs (float64 too under ``1``: its C library ``exp`` is taken one
lane at a time, and the float64 read measured slower than the PyTorch path's) with finite ``w``
and ``u`` and ``w >= 0``, outside ``torch.compile``; anything else runs the PyTorch path.  Keys and
values are not looked at beforehand (a sum over them cost 0.1 ms at the 16k link, 2% of the
forward): the scan itself notes a NaN or infinite one and raises :class:`WKVNonFiniteError`, on
which rwkv runs the PyTorch path (NaN from that key on, as the step recurrence gives).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from canvas_core.attention.causal_read import reads_by_position
from canvas_core.attention.first_order import first_order_backward
from canvas_core.errors import ShapeError, UnavailableError
from canvas_core.kernels.cpu_build import CpuKernel, CpuKernelBuildWarning

__all__ = ["ENV", "KERNEL", "W_MAX", "CHUNK", "WKVNonFiniteError", "usable_for", "wkv_read_cpu"]

ENV = "CANVAS_RWKV_CPU_KERNEL"
#: decay rates above this forget every earlier key completely (the cap wkv_read applies)
W_MAX = 1e4
#: keys between two states the forward saves for the backward
CHUNK = 32
#: positions stay exact integers in float32 below this
_MAX_LEN = 1 << 24

KERNEL = CpuKernel(Path(__file__).with_name("csrc") / "wkv_cpu.cpp", namespace="canvas_rwkv_cpu", probe="wkv_fwd",
                   env=ENV, label="rwkv's compiled CPU WKV read", fallback="its PyTorch WKV (same results, slower)",
                   seconds=20, warning=CpuKernelBuildWarning)


class WKVNonFiniteError(UnavailableError):
    """The compiled read met a NaN or infinite key or value (its scan checks them as it goes):
    nothing was returned and no autograd node recorded.  rwkv's module catches it and runs the
    PyTorch path; a direct caller of :func:`wkv_read_cpu` sees the :class:`UnavailableError` it
    is, naming the fix."""


def usable_for(k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor,
               key_ok: Optional[torch.Tensor] = None) -> bool:
    """Whether ``kernel="auto"`` takes the compiled read for these inputs: CPU, float32 (float64
    only when the setting is ``1``), ``0 < L < 2^24``, not under ``torch.compile``, finite ``w`` and
    ``u`` with ``w >= 0`` (``(C,)`` each: cheap), and the setting allows it and the kernel builds
    (``1``: required, an :class:`~canvas_core.errors.UnavailableError` when it cannot be built).
    ``k`` and ``v`` are not read: a non-finite one makes :func:`wkv_read_cpu` raise
    :class:`WKVNonFiniteError` (the caller then runs the PyTorch path)."""
    if torch.compiler.is_compiling() or k.device.type != "cpu" or k.dtype not in (torch.float32, torch.float64):
        return False
    if any(t.device.type != "cpu" or t.dtype != k.dtype for t in (v, w, u)) or k.is_meta:
        return False
    if not 0 < k.shape[1] < _MAX_LEN or (key_ok is not None and key_ok.device.type != "cpu"):
        return False
    if k.dtype == torch.float64 and KERNEL.setting() != "on":
        return False  # slower than the PyTorch path in float64 (measured at the 16k link: 99 vs 86 ms f+b)
    if not KERNEL.wanted():
        return False
    with torch.no_grad():
        return bool(torch.isfinite(w.sum() + u.sum()) & ~(w < 0).any())


_TORCH_PATH = "call canvas_core.attention.rwkv.wkv_read instead (it takes the PyTorch path for them)"


def _non_finite(what: str, cls: type = UnavailableError) -> UnavailableError:
    return cls(f"wkv_read_cpu: {what} holds NaN or infinite values, which the compiled WKV read does not "
               f"handle; {_TORCH_PATH}")


def _check_operands(k, v, w, u, read, key_ok) -> None:
    """Shapes, dtypes and devices of the operands, ``read``'s positions, finite ``w`` and ``u``,
    ``w >= 0`` (the kernel reports non-finite keys and values itself)."""
    if k.dim() != 3 or v.shape != k.shape or w.shape != (k.shape[2],) or u.shape != (k.shape[2],):
        raise ShapeError(f"wkv_read_cpu: k, v must be (B, L, C) alike and w, u (C,); got k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}, w {tuple(w.shape)}, u {tuple(u.shape)}")
    if k.dtype not in (torch.float32, torch.float64) or any(t.dtype != k.dtype or t.device.type != "cpu"
                                                            for t in (k, v, w, u)):
        raise ShapeError(f"wkv_read_cpu: k, v, w, u must be CPU float32 or float64 alike; got "
                         f"{[(str(t.dtype), t.device.type) for t in (k, v, w, u)]}")
    if not isinstance(read, torch.Tensor) or read.dim() != 1 or read.dtype == torch.bool or read.is_floating_point() \
            or read.is_complex() or read.device.type != "cpu":
        got = f"{tuple(read.shape)} {read.dtype} on {read.device}" if isinstance(read, torch.Tensor) else type(read).__name__
        raise ShapeError(f"wkv_read_cpu: read must be a 1-D integer CPU tensor of positions, got {got}; flatten "
                         f"it (read.reshape(-1)) and reshape the (B, Q, C) output back")
    L = k.shape[1]
    if read.numel() and (int(read.min()) < -1 or int(read.max()) > L - 1):
        raise ShapeError(f"wkv_read_cpu: read holds positions from {int(read.min())} to {int(read.max())}, outside "
                         f"[-1, L - 1] = [-1, {L - 1}] for k's L = {L}; pass key positions, or -1 for no read")
    if key_ok is not None and (key_ok.dim() != 2 or key_ok.shape[1] != L or key_ok.shape[0] not in (1, k.shape[0])):
        raise ShapeError(f"wkv_read_cpu: key_ok must be (B|1, L) = ({k.shape[0]}|1, {L}), got {tuple(key_ok.shape)}")
    for name, t in (("w", w), ("u", u)):
        if not bool(torch.isfinite(t).all()):
            raise _non_finite(name)
    if bool((w < 0).any()):
        raise ShapeError(f"wkv_read_cpu: w holds negative decay rates (smallest {float(w.min()):g}); w is RWKV's "
                         f"decay rate exp(time_decay) >= 0, and the compiled read's backward loses its accuracy "
                         f"for large negative ones: pass torch.exp(time_decay), or w.clamp(min=0)")


class _WKVRead(torch.autograd.Function):
    """The compiled read with its compiled backward (first order)."""

    @staticmethod
    def forward(ctx, k, v, w, u, key_ok, rs, rq, Q):  # noqa: D401 - autograd signature
        save = any(ctx.needs_input_grad[:4])
        y, hs, bad = torch.ops.canvas_rwkv_cpu.wkv_fwd(k, v, w, u, key_ok, rs, rq, Q, CHUNK, save)
        if bool(bad):  # checked in the scan itself: no extra pass over k and v
            raise _non_finite("k or v", WKVNonFiniteError)  # before anything is saved: no half-built node
        if save:
            ctx.save_for_backward(k, v, w, u, key_ok, rs, rq, hs)
        return y

    @staticmethod
    @first_order_backward("rwkv's compiled CPU WKV read")
    def backward(ctx, gy):
        k, v, w, u, key_ok, rs, rq, hs = ctx.saved_tensors
        dk, dv, dw, du = torch.ops.canvas_rwkv_cpu.wkv_bwd(gy.contiguous(), k, v, w, u, key_ok, rs, rq, hs, CHUNK)
        return dk, dv, dw, du, None, None, None, None


def wkv_read_cpu(k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor, read: torch.Tensor,
                 key_ok: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`~canvas_core.attention.rwkv.wkv_read` by the compiled kernel (call it where
    :func:`usable_for` is True; it builds the kernel if needed).

    Non-finite inputs are refused, not computed: for NaN or infinite ``k``, ``v``, ``w`` or ``u``
    (masked positions included) use :func:`canvas_core.attention.rwkv.wkv_read`, whose PyTorch
    path gives NaN from a bad key's position on, as the step recurrence does.

    Args:
        k, v: ``(B, L, C)`` finite; w: ``(C,)`` finite decay rate ``>= 0`` (``exp(time_decay)``;
            0 is no decay, where an exp underflows; capped at :data:`W_MAX`);
            u: ``(C,)`` finite, all CPU float32 or float64 alike.
        read: ``(Q,)`` integer positions in ``[-1, L - 1]``, any order, repeats allowed.
        key_ok: optional bool ``(B|1, L)``.

    Returns:
        ``(B, Q, C)``; 0 where no key is allowed up to the read or the read is ``-1``.

    Raises:
        ShapeError: operands of the wrong shape, dtype or device, ``read`` not a 1-D integer
            tensor of positions in ``[-1, L - 1]``, or a negative ``w``.
        WKVNonFiniteError: NaN or infinite ``k`` or ``v`` (an :class:`UnavailableError`).
        UnavailableError: NaN or infinite ``w`` or ``u``, or the kernel cannot be built.
    """
    _check_operands(k, v, w, u, read, key_ok)
    KERNEL.require("rwkv: the compiled CPU WKV read")
    B, L, C = k.shape
    w = w.clamp(max=W_MAX)
    rs, rq = reads_by_position(read, L)
    ok = None if key_ok is None else key_ok.to(device=k.device, dtype=torch.bool).contiguous()
    return _WKVRead.apply(k.contiguous(), v.contiguous(), w.contiguous(), u.contiguous(), ok, rs, rq, read.shape[0])
