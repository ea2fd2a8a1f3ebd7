"""What the sequence-operator attention types (RWKV, Hyena) share: where each query reads the
key/value sequence, the working dtype, chunk sizes, and the check of a ``kernel=`` choice.

A query ``i`` reads the state after key ``p(i) = ceil((i + 1) * Nk / Nq) - 1``
(:func:`canvas_core.attention._base.causal_read_index`): at least key 0 whenever there is a key;
a query whose allowed keys all lie after ``p(i)`` outputs zeros.
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Callable, Optional, Tuple, TypeVar

import torch

from canvas_core.attention._base import autocast_on, causal_read_index
from canvas_core.errors import CanvasTypeError

__all__ = ["NEG_INF", "CHUNK_ELEMS", "work_dtype", "finite_or_zero", "check_kernel_choice", "rows_identical",
           "causal_read", "reads_by_position", "read_at", "scratch", "scratch_out", "exp_floor", "outside_autocast", "autocast_on"]

NEG_INF = float("-inf")
CHUNK_ELEMS = 1 << 24  # bound on the size of per-query intermediate tensors


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


_F = TypeVar("_F", bound=Callable)


def outside_autocast(fn: _F) -> _F:
    """Run ``fn(k, ...)`` with autocast off on ``k``'s device: the scans' hand-written autograd
    functions compute in the dtype they are given, and under autocast their products would run
    in bfloat16 and their backwards receive gradients of another dtype."""

    @functools.wraps(fn)
    def wrapped(k, *args, **kwargs):
        dev = k.device.type
        if not autocast_on(dev):
            return fn(k, *args, **kwargs)
        with torch.autocast(dev, enabled=False):
            return fn(k, *args, **kwargs)

    return wrapped  # type: ignore[return-value]


def finite_or_zero(q: torch.Tensor) -> torch.Tensor:
    """``q`` with its ``-inf`` entries replaced by 0 (a running maximum over nothing)."""
    return torch.where(q == NEG_INF, torch.zeros_like(q), q)


def exp_floor(dtype: torch.dtype) -> float:
    """The exponent below which ``exp`` leaves the normal range of ``dtype`` (about -86.8 for
    float32, -707.9 for float64).  CPUs compute ``exp`` of a smaller argument, or of ``-inf``,
    in a slow path (tens of times slower for subnormal results), so the scans clamp their
    max-relative exponents to this floor and zero the entries they mask explicitly; a kept
    entry at the floor weighs ``< 2e-38`` against the largest one, which weighs 1."""
    return math.log(torch.finfo(dtype).tiny) + 0.5


def check_kernel_choice(type_name: str, kernel: str) -> str:
    """``"auto"``, ``"torch"``, or the name of a registered kernel that supports ``type_name``
    (e.g. ``fla_rwkv`` from canvas-plugin-fla); anything else is a clear error."""
    if kernel in ("auto", "torch"):
        return kernel
    if not isinstance(kernel, str):
        raise CanvasTypeError(f"{type_name}: kernel must be a kernel name, got {kernel!r}")
    from canvas_core.plugins import get_kernel_spec

    spec = get_kernel_spec(kernel)  # UnknownNameError (with install hint) for unknown names
    if type_name not in tuple(getattr(spec, "supports", ()) or ()):
        raise CanvasTypeError(
            f"{type_name}: kernel {kernel!r} ({spec.describe_provider()}) does not compute "
            f"{type_name}; use kernel='auto', 'torch', or a kernel whose supports include {type_name!r}"
        )
    return kernel


def rows_identical(allowed: torch.Tensor) -> bool:
    """True when a ``(B|1, Nq, Nk)`` mask is the same for every query (eager mode only; under
    compile and on the meta device, where its values cannot be read, False: the general path)."""
    if allowed.shape[1] == 1:
        return True
    if torch.compiler.is_compiling() or allowed.is_meta:
        return False
    return bool((allowed == allowed[:, :1, :]).all())


def causal_read(
    Nq: int, Nk: int, allowed: Optional[torch.Tensor], device
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Causal read positions of the queries and which queries read anything.

    Args:
        allowed: ``(B|1, Nq|1, Nk)`` bool key mask, or None (every key allowed).

    Returns:
        ``read (Nq,)``: :func:`causal_read_index` (``-1`` only when ``Nk == 0``);
        ``has (B|1, Nq, 1)`` bool: query ``i`` has an allowed key ``j <= read_i``.
    """
    read = causal_read_index(Nq, Nk, device=device)
    if allowed is None or Nk == 0:  # every query reads at least key 0 when there is one
        shape = (1 if allowed is None else allowed.shape[0], Nq, 1)
        return read, torch.full(shape, Nk > 0, dtype=torch.bool, device=device)
    # the first allowed key of each row at or before its read: O(B Nq Nk) reads, no copy of the mask
    first = torch.where(allowed.any(-1), allowed.view(torch.uint8).argmax(-1), Nk)  # (B|1, Nq|1)
    return read, (first <= read.view(1, -1)).unsqueeze(-1)


def reads_by_position(read: torch.Tensor, L: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``read (Q,)`` (positions in ``[-1, L - 1]``) grouped by position, as a compiled scan walking
    the ``L`` keys in order takes them: ``(rs (L + 1,), rq)``, the queries reading position ``t``
    being ``rq[rs[t]:rs[t + 1]]`` in query order (``read < 0``: in no group).  Both int64."""
    read = read.to(torch.long)
    ok = read >= 0
    pos = read[ok]
    counts = torch.bincount(pos, minlength=L)
    rs = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    rq = torch.nonzero(ok).squeeze(1)[torch.argsort(pos, stable=True)]
    return rs.contiguous(), rq.contiguous()


def plain_module(module: object, cls: type) -> bool:
    """``module`` is an instance of exactly ``cls`` (a subclass may compute something else) with
    no forward hook and no forward pre-hook registered on it: code that reads its parameters and
    does the module's arithmetic itself gives what calling it would."""
    return (type(module) is cls
            and not module._forward_hooks and not module._forward_pre_hooks)


def plain_linear(module: object, with_bias: bool) -> bool:
    """``module`` is a bare ``nn.Linear`` (:func:`plain_module`) with a bias when ``with_bias``
    and without one otherwise: its weights may then be used directly in a fused product in place
    of calling it."""
    return plain_module(module, torch.nn.Linear) and (module.bias is not None) == with_bias


def read_at(seq: torch.Tensor, read: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``seq (B, Nk, C)`` read at ``read (Nq,)`` -> ``(B, Nq, C)``; zeros where ``read < 0``
    (the validity factor is cast to ``dtype``, the working dtype)."""
    valid = read >= 0
    return seq.index_select(1, read.clamp(min=0)) * valid.view(1, -1, 1).to(dtype)


_LOCAL = threading.local()


def scratch(slot: str, shape, like: torch.Tensor) -> torch.Tensor:
    """A temporary of ``shape`` for ``slot``, kept per thread, dtype and device between calls (a
    fresh multi-megabyte tensor per call costs more in page faults than the arithmetic on it).
    Only for temporaries: nothing returned or saved for backward may live in it.  Buffers made
    under ``torch.inference_mode`` are kept apart (an inference tensor cannot be written outside
    it: one inference call would break every later call of the thread)."""
    if torch.compiler.is_compiling():  # a traced graph allocates its own (and cannot ask for inference mode)
        return like.new_empty(shape)
    cache = _LOCAL.__dict__.setdefault("bufs", {})
    key = (slot, like.dtype, like.device, torch.is_inference_mode_enabled())
    n = math.prod(shape)
    buf = cache.get(key)
    if buf is None or buf.numel() < n:
        buf = cache[key] = like.new_empty(max(n, 1))
    return buf[:n].view(shape)


def scratch_out(slot: str, shape, like: torch.Tensor) -> Optional[torch.Tensor]:
    """An ``out=`` target for an operation inside an autograd function: the :func:`scratch`
    buffer ``slot``, or None (the operation then returns a fresh tensor) while a tracer records
    the code or autograd does.  A traced ``out=`` operation stays in the graph and cannot be
    differentiated when the graph runs (``torch.export`` runs an ``autograd.Function``'s forward
    as plain operations), and autograd cannot differentiate one either."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return None
    return scratch(slot, shape, like)


def release_scratch() -> int:
    """Drop the calling thread's :func:`scratch` buffers and return how many bytes they held.

    The buffers stay at the largest size a call has asked for (about 50 MB after a layer of
    16,384 positions), on every device they were made on; after a large evaluation this gives
    that memory back.  The next call that needs a buffer makes a new one.  Other threads' buffers
    are theirs to release."""
    bufs = _LOCAL.__dict__.pop("bufs", {})
    return sum(b.numel() * b.element_size() for b in bufs.values())
