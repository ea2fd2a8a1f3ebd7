"""What keeps a :func:`~canvas_core.runtime.verify.verify_structure` run fast and its failures
legible:

* :func:`lean_kernels` -- while a model is probed, the core's reference kernel of a large canvas
  runs in its ``segments`` mode (the exact key set of each query class, no ``N x N`` mask) when
  the layer built it in a mode doing more work: the same function of q, k, v, but a backward
  pass per probed query that costs the linked pairs instead of ``N x N``.  Kernels of plugins
  are probed as they are (they are what the model runs).
* :func:`check_finite` / :class:`NonFiniteProbe` -- a NaN or infinite output or gradient on
  finite random inputs is named as such (a NaN gradient is nonzero everywhere, so it would read
  as a dependency on every input).
* :func:`naming_failures` -- an exception raised by a plugin's module or kernel while it is
  probed becomes one :class:`~canvas_core.errors.PluginError` naming the fn type and its
  connections, instead of a traceback (``canvas verify`` exits 2 on it, not 1).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from canvas_core.errors import AttentionContractError, CanvasError, CanvasTypeError, PluginError

__all__ = ["lean_kernels", "LEAN_FROM", "check_finite", "NonFiniteProbe", "naming_failures", "refuse_non_floating"]

#: canvases of at least this many positions probe the reference kernel in its leanest mode; on
#: smaller ones every mode is fast, and the layer is probed exactly as built
LEAN_FROM = 1024


def _lean_twin(kernel: nn.Module, plan: Any, fn: str) -> Optional[nn.Module]:
    """A ``segments``-mode copy of a core reference kernel doing less work than ``kernel``, else None."""
    from canvas_core.runtime.kernels import ReferenceKernel

    if type(kernel) is not ReferenceKernel or kernel.mode == "segments" or int(plan.n) < LEAN_FROM:
        return None
    buf = next(kernel.buffers(), None)
    try:
        twin = ReferenceKernel(plan.groups[fn], plan, n_heads=kernel.n_heads, head_dim=kernel.head_dim,
                               mode="segments", block_size=kernel.block_size,
                               device=None if buf is None else buf.device)
    except (CanvasError, MemoryError, RuntimeError):  # too large to index that way: probe it as built
        return None
    work = 1.0 if kernel.mode == "dense" else float(kernel.sparse_work_fraction)
    return twin if twin.sparse_work_fraction < work else None


@contextmanager
def lean_kernels(model: nn.Module, as_built: bool = False) -> Iterator[None]:
    """Within: every ``CanvasAttention`` of ``model`` runs its core reference kernels in the
    ``segments`` mode where that does less work (see the module docstring); restored after.
    ``as_built``: nothing is swapped."""
    from canvas_core.runtime.canvas_attention import CanvasAttention

    swapped: List[Tuple[nn.ModuleDict, str, nn.Module]] = []
    twins: Dict[Tuple[Any, ...], Optional[nn.Module]] = {}  # layers of one plan share one (no parameters)
    try:
        for layer in ([] if as_built else model.modules()):
            if not isinstance(layer, CanvasAttention):
                continue
            ex = layer.executor
            for i, f in enumerate(ex.soft_fns):
                key = f"k{i}"
                if key not in ex.kernels:
                    continue
                kernel = ex.kernels[key]
                buf = next(kernel.buffers(), None)
                at = (id(layer.plan), f, type(kernel), None if buf is None else buf.device,
                      *(getattr(kernel, a, None) for a in ("mode", "n_heads", "head_dim", "block_size")))
                if at not in twins:
                    twins[at] = _lean_twin(kernel, layer.plan, f)
                twin = twins[at]
                if twin is not None:
                    swapped.append((ex.kernels, key, ex.kernels[key]))
                    ex.kernels[key] = twin
        yield
    finally:
        for kernels, key, kernel in reversed(swapped):
            kernels[key] = kernel


class NonFiniteProbe(Exception):
    """Raised inside a probe (turned into an ``AttentionContractError`` by :func:`naming_failures`):
    ``what`` is ``"output"`` or ``"gradient"``."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def check_finite(t: Optional[torch.Tensor], what: str) -> None:
    """:class:`NonFiniteProbe` when ``t`` holds a NaN or an infinity."""
    if t is not None and t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
        raise NonFiniteProbe(what)


def refuse_non_floating(out: torch.Tensor, what: str) -> None:
    """``CanvasTypeError`` when ``out`` is an integer or bool tensor: the probe differentiates it and
    compares its values within a few ulps of a floating dtype, neither of which such a tensor has."""
    if isinstance(out, torch.Tensor) and not (out.is_floating_point() or out.is_complex()):
        raise CanvasTypeError(
            f"verify_structure: {what} is a {out.dtype} tensor; the probe takes gradients of the output and "
            f"compares its values within a floating tolerance, which {out.dtype} values allow neither of. Verify "
            "the model up to its last floating output (the logits or scores before an argmax, a threshold, "
            ".long() or .bool()): wrap it in an nn.Module whose forward(x) returns that")


def _non_finite_message(where: str, label: str, what: str) -> str:
    if what == "output":
        return (f"verify_structure: {where}{label} returns NaN or infinite values on finite inputs (random "
                "ones: the probe of its reads cannot tell what it depends on, a NaN reads as a dependency on "
                "every input); fix its arithmetic (a division by zero, the log of 0, an overflow)")
    return (f"verify_structure: {where}{label} has a NaN or infinite gradient w.r.t. its input although its "
            "inputs and output are finite (the probe of its reads cannot tell what it depends on, and "
            "training would diverge); fix its backward arithmetic (sqrt or pow of 0, the log of 0, a "
            "division by zero)")


def _owner(exc: BaseException, owners: Dict[int, str]) -> Optional[str]:
    """The fn type whose module (or kernel) a frame of ``exc``'s traceback ran in, innermost first."""
    tb, found = exc.__traceback__, None
    while tb is not None:
        me = tb.tb_frame.f_locals.get("self")
        if me is not None and id(me) in owners:
            found = owners[id(me)]
        tb = tb.tb_next
    return found


def _owners(modules: Any) -> Dict[int, str]:
    """``id(module) -> fn`` for every submodule of each fn type's module or kernel (``modules``: a
    dict fn -> module, or ``(fn, module)`` pairs)."""
    out: Dict[int, str] = {}
    for f, m in (modules.items() if isinstance(modules, dict) else modules):
        for sub in m.modules():
            out.setdefault(id(sub), f)
    return out


@contextmanager
def naming_failures(where: str, plan: Any = None, modules: Any = None,
                    kernel: str = "") -> Iterator[None]:
    """Within: a :class:`NonFiniteProbe` becomes an ``AttentionContractError`` naming ``where``
    (and ``kernel``, what runs it); an exception other than a ``CanvasError`` raised in the module
    or kernel of a fn type (found in the traceback among ``modules``: fn type -> its module or
    kernel, or ``(fn, module)`` pairs) becomes a ``PluginError`` naming that type and its connections in ``plan``.
    Anything else passes unchanged."""
    try:
        yield
    except NonFiniteProbe as exc:
        label = f" (run by {kernel})" if kernel else ""
        raise AttentionContractError(_non_finite_message(where, label, exc.what)) from None
    except (CanvasError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":
            raise
        owner = _owner(exc, _owners(modules or {}))
        if owner is None:
            raise
        from canvas_core.runtime.type_dtypes import type_connections

        pairs = type_connections(plan, owner) if plan is not None else ()
        named = ", ".join(f"{s!r} -> {d!r}" for s, d in pairs[:4]) + (" ..." if len(pairs) > 4 else "")
        conns = f" (connection{'s' if len(pairs) > 1 else ''} {named})" if pairs else ""
        text = " ".join(str(exc).split())[:200]
        raise PluginError(
            f"verify_structure: fn type {owner!r}{conns} raised {type(exc).__name__} while {where} was probed: "
            f"{text}; fix the type's module or kernel (or leave it out of the topology) and verify again"
        ) from exc
