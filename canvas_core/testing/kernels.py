"""Conformance of an attention kernel: the core's dense reference kernel is the oracle."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from canvas_core.testing._report import (ConformanceReport, Failed as _Failed, check_sizes as _check_sizes,
                                         check_seed as _check_seed, check_target as _check_target, finish,
                                         resolve_device as _resolve_device, resolve_dtype as _resolve_dtype)

__all__ = ["check_kernel"]


def check_kernel(name: Any, *, n_heads: int = 2, head_dim: int = 8, device: Any = "cpu", dtype: Any = None,
                 seed: int = 0, atol: Optional[float] = None, backward: Optional[bool] = None,
                 raise_on_failure: bool = True, **options: Any) -> ConformanceReport:
    """Check a kernel (registered name or factory) against the core's dense reference kernel.

    Builds a few small canvases (weighted connections, a temporal offset, a region no connection
    reads), lowers each to an :class:`~canvas_core.compiler.plan.ExecutionPlan` and, for every fn
    group the kernel supports, compares ``kernel(q, k, v, scale=...)`` with
    ``ReferenceKernel(mode="dense")`` on random ``(B, H, N, d)`` inputs (output and, unless
    ``backward=False``, gradients; default: the spec's ``differentiable`` metadata, else True).
    """
    import torch

    from canvas_core.compiler.lowering import lower
    from canvas_core.runtime.kernels import ReferenceKernel
    from canvas_core.schema import CanvasLayout, CanvasTopology, Connection

    _check_target(name, "check_kernel", "kernels")
    _check_sizes("check_kernel", n_heads=n_heads, head_dim=head_dim)
    _check_seed("check_kernel", seed)
    dtype = _resolve_dtype(torch, dtype, "check_kernel")
    device = _resolve_device(torch, device, "check_kernel")
    tol = atol if atol is not None else (2e-5 if dtype in (torch.float32, torch.float64) else 3e-2)
    label = name if isinstance(name, str) else getattr(name, "__name__", repr(name))
    report = ConformanceReport(f"kernel {label}")
    supports: Sequence[str] = ("cross_attention",)
    if isinstance(name, str):
        from canvas_core.plugins import create_kernel, get_kernel_spec

        kspec = get_kernel_spec(name)
        supports = kspec.supports or supports
        if backward is None:
            backward = kspec.metadata.get("differentiable", True) is not False

        def factory(group, plan, **kw):
            return create_kernel(name, group, plan, **kw)
    else:
        factory = name
    backward = True if backward is None else bool(backward)
    layout = CanvasLayout(T=3, H=2, W=3, d_model=n_heads * head_dim, regions={
        "a": (0, 3, 0, 1, 0, 3), "b": (0, 3, 1, 2, 0, 2), "c": (0, 2, 1, 2, 2, 3)})
    cases = {
        "dense": CanvasTopology(connections=[Connection("a", "b"), Connection("b", "a", weight=0.5),
                                             Connection("a", "a", weight=2.0)]),
        "temporal": CanvasTopology(connections=[Connection("a", "b", t_src=0, t_dst=-1),
                                                Connection("b", "b")]),
    }
    gen = torch.Generator().manual_seed(seed)
    for case, topo in cases.items():
        for fn in supports:
            topo_fn = CanvasTopology(connections=[
                Connection(c.src, c.dst, weight=c.weight, t_src=c.t_src, t_dst=c.t_dst, fn=fn)
                for c in topo.connections])
            prop = f"{case}/{fn}"
            try:
                plan = lower(topo_fn, layout)
                group = plan.groups[fn]
                ref = ReferenceKernel(group, plan, n_heads=n_heads, head_dim=head_dim, mode="dense").to(device)
                ker = factory(group, plan, n_heads=n_heads, head_dim=head_dim, **options).to(device)
                N = plan.n
                q, k, v = (torch.randn(2, n_heads, N, head_dim, generator=gen).to(device, dtype)
                           .requires_grad_(backward) for _ in range(3))
                scale = 1.0 / math.sqrt(head_dim)
                with torch.set_grad_enabled(backward):
                    out = ker(q, k, v, scale=scale)
                    want = ref(q.float(), k.float(), v.float(), scale=scale)
                if tuple(out.shape) != tuple(want.shape):
                    raise _Failed(f"output shape {tuple(out.shape)}, expected {tuple(want.shape)}")
                diff = float((out.detach().float() - want.detach()).abs().max())
                if not math.isfinite(diff) or diff > tol:
                    raise _Failed(f"differs from the reference by {diff:.3g} (atol {tol})")
                if not backward:
                    report.passed.append(prop)
                    continue
                g = torch.randn(want.shape, generator=gen).to(device)
                got = torch.autograd.grad((out.float() * g).sum(), (q, k, v))
                exp = torch.autograd.grad((want * g).sum(), (q, k, v))
                gdiff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(got, exp))
                if not math.isfinite(gdiff) or gdiff > tol * 10:
                    raise _Failed(f"gradients differ from the reference by {gdiff:.3g}")
            except _Failed as exc:
                report.failed[prop] = str(exc)
            except Exception as exc:
                report.failed[prop] = f"raised {type(exc).__name__}: {exc}"
            else:
                report.passed.append(prop)
    return finish(report, raise_on_failure, f"{report.name} fails the kernel conformance check")
