"""The contract check of a kernel before a canvas layer uses it (:func:`probe_kernel`): the kernel
is built for a small canvas of the fn type, 12 positions with a weighted link, a link one frame
back and positions without keys, and called once on random inputs; only definite breaches of
the call contract of :mod:`canvas_core.runtime.kernels` are reported."""

from __future__ import annotations

import contextlib
import inspect
import math
from typing import Any, Dict, Optional

import torch
from torch import nn

from canvas_core.compiler.plan import ExecutionPlan
from canvas_core.compiler.resolved import ResolvedGroup
from canvas_core.errors import CanvasError
from canvas_core.plugins.spec import Spec
from canvas_core.runtime.kernels import make_kernel
from canvas_core.runtime.type_values import out_of_memory

__all__ = ["probe_kernel"]


#: the probe's canvas: 12 positions, a weighted link, a link one frame back, positions without keys
_PROBE_REGIONS = {"a": (0, 2, 0, 1, 0, 3), "b": (0, 2, 1, 2, 0, 2), "c": (0, 1, 1, 2, 2, 3)}


def _probe_plan(fn: str, d_model: int) -> ExecutionPlan:
    from canvas_core.compiler.lowering import lower
    from canvas_core.schema import CanvasLayout, CanvasTopology, Connection

    layout = CanvasLayout(T=2, H=2, W=3, d_model=d_model, regions=_PROBE_REGIONS)
    links = [Connection("a", "b", fn=fn), Connection("b", "a", weight=0.5, fn=fn),
             Connection("b", "b", t_src=0, t_dst=-1, weight=2.0, fn=fn)]
    return lower(CanvasTopology(connections=links), layout)


def _eager() -> Any:
    """``torch.compile`` calls run eagerly inside: a kernel compiling itself on its first call
    (FlexAttention) must not pay a compile for the probe's shapes."""
    stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    if stance is None or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return stance("force_eager")


def _default_device() -> torch.device:
    """Where tensors are made without ``device=`` (``with torch.device("meta"):`` included)."""
    get = getattr(torch, "get_default_device", None)
    return get() if get is not None else torch.empty(0).device


def probe_kernel(kernel: Any, fn: str, *, n_heads: int, head_dim: int, dtype: Any, device: Any = None,
                 options: Optional[Dict[str, Any]] = None) -> Optional[str]:
    """What keeps ``kernel`` (anything :func:`make_kernel` takes) from running fn group ``fn`` as a
    canvas layer calls it, or None: it is built for a small canvas of that type (12 positions,
    ``options`` passed on) and called once, ``kernel(q, k, v, scale=..., dropout_p=0.0)`` on
    random ``(2, n_heads, 12, head_dim)`` tensors of ``dtype`` on ``device`` (default: torch's
    default device; nothing runs on ``meta``), without gradients and with the global random state
    left as it was.  Only definite breaches are reported: a factory that gives no ``nn.Module``, a
    ``forward`` that cannot take ``scale=`` / ``dropout_p=``, an out-of-memory error of the call, a
    write into q, k or v (by value: ``.data`` writes included), and an output that is not a finite
    tensor of the inputs' shape, dtype and device.  A kernel that cannot be built or called on
    this small canvas (it needs CUDA, another dtype, a block size) is not judged here: its real
    build or call reports the problem.  The math is not compared with the reference
    (``canvas_core.testing.check_kernel`` does that).  A :class:`CanvasError` of the factory
    propagates.  A registered kernel that declares other devices or dtypes is built for what it
    declares (no call on a device it does not run on)."""
    spec = kernel.kernel if isinstance(kernel, ResolvedGroup) else kernel
    dev = _default_device() if device is None else torch.device(device)
    if dev.type == "meta":  # deferred initialisation: nothing can run
        return None
    if isinstance(spec, Spec):
        if spec.devices is not None and dev.type not in spec.devices:
            return None
        if spec.dtypes is not None and str(dtype).replace("torch.", "") not in spec.dtypes:
            dtype = getattr(torch, spec.dtypes[0])
    plan = _probe_plan(fn, n_heads * head_dim)
    with torch.random.fork_rng(devices=[]), _eager(), torch.no_grad():
        try:
            module = make_kernel(kernel, plan.groups[fn], plan, n_heads=n_heads, head_dim=head_dim,
                                 device=device, **dict(options or {}))
        except CanvasError:
            raise
        except Exception:  # noqa: BLE001 - perhaps only on this small canvas (a block size, a device)
            return None  # the build for the layer's own plan reports what is wrong
        if not isinstance(module, nn.Module):
            got = "None" if module is None else f"a {type(module).__name__}"
            return f"is built as {got}, not an nn.Module: its factory must return the kernel module"
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(2, n_heads, plan.n, head_dim, generator=gen).to(device=dev, dtype=dtype)
                   for _ in range(3))
        scale = 1.0 / math.sqrt(head_dim)
        try:
            inspect.signature(module.forward).bind(q, k, v, scale=scale, dropout_p=0.0)
        except TypeError as exc:
            return (f"cannot be called as kernel(q, k, v, scale=..., dropout_p=...), as canvas layers call "
                    f"it ({exc}): its forward must take q, k, v and the keywords scale and dropout_p")
        except ValueError:
            pass  # no readable signature: the call says
        shape = f"q, k, v of shape {tuple(q.shape)} ({str(dtype).replace('torch.', '')})"
        before = [t.clone() for t in (q, k, v)]  # a write through .data moves no version counter
        try:
            module.eval()
            out = module(q, k, v, scale=scale, dropout_p=0.0)
        except Exception as exc:  # noqa: BLE001 - a kernel may need CUDA, another dtype or its own sizes:
            asked = out_of_memory(exc)  # ... but not terabytes for 12 positions
            if asked is not None:
                return (f"tried to allocate {asked} for {shape} (12 positions): an allocation of its own, "
                        "not one the canvas asked for")
            return None  # only what it returns is judged here; a real call raises where it runs
        written = [n for n, t, b in zip("qkv", (q, k, v), before) if not torch.equal(t, b)]
        if written:
            return (f"writes into its input{'s' * (len(written) > 1)} {', '.join(written)} ({shape}): a kernel "
                    "must not modify q, k or v (they are views of the layer's projections, saved for the "
                    "backward pass); compute on a copy")
    if not isinstance(out, torch.Tensor):
        return f"returned a {type(out).__name__}, not a tensor, for {shape}"
    if tuple(out.shape) != tuple(q.shape):
        return f"returned shape {tuple(out.shape)} for {shape}: the output must have the shape of q"
    if out.dtype != q.dtype or out.device != q.device:
        return (f"returned {out.dtype} on {out.device} for {shape} on {q.device}: the output must keep "
                "the inputs' dtype and device")
    if not bool(torch.isfinite(out).all()):
        return (f"returned NaN or infinite values for finite {shape}: every output must be finite (a "
                "query without keys outputs exactly 0)")
    return None
