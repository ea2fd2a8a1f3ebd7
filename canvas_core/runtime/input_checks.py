"""Checks at the boundary of the runtime modules: what a user passes to a forward or constructor.

Each check raises a :class:`~canvas_core.errors.CanvasError` naming the module (``CanvasAttention``,
``SpatiotemporalCanvas.place``, ...) and the fix, instead of a raw torch error deep inside a
matrix product. They compare a few attributes only (no pass over the data), so a forward pays
nothing measurable for them.
"""

from __future__ import annotations

import inspect
import reprlib
from typing import Any, Dict, Optional, Sequence

import torch

from canvas_core.errors import CanvasTypeError, SchemaError, ShapeError
from canvas_core.schema.limits import check_elements, check_size

__all__ = ["check_tensor", "check_width", "check_count", "check_finite_number", "check_region_names"]


def check_tensor(where: str, name: str, x: Any, shape: Optional[Sequence[Optional[int]]] = None,
                 like: Optional[torch.Tensor] = None, layout: str = "") -> None:
    """``x`` is a floating tensor with real data (not on the meta device), of ``shape`` (None:
    any size on that axis), with the dtype and device of ``like`` (a parameter of the module)."""
    if not isinstance(x, torch.Tensor):
        raise CanvasTypeError(f"{where}: {name} must be a torch.Tensor{_shape_text(shape, layout)}, got "
                              f"{type(x).__name__}; convert it with torch.as_tensor(...)")
    if x.device.type == "meta":
        raise ShapeError(f"{where}: {name} is on the meta device (shape only, no data); pass a tensor with "
                         "real values on the module's device")
    if not x.is_floating_point():
        raise ShapeError(f"{where}: {name} must be a real floating tensor, got {x.dtype}; convert it with "
                         f"{name}.float() (or .to(dtype) of the module's parameters)")
    if shape is not None and (x.dim() != len(shape) or any(s is not None and x.shape[i] != s
                                                            for i, s in enumerate(shape))):
        raise ShapeError(f"{where}: {name} must have shape{_shape_text(shape, layout)}, got {tuple(x.shape)}")
    if like is not None:
        if x.device != like.device:
            raise ShapeError(f"{where}: {name} is on {x.device} but the module's parameters are on "
                             f"{like.device}; move one of them (module.to({str(x.device)!r}) or "
                             f"{name}.to({str(like.device)!r}))")
        if x.dtype != like.dtype:
            raise ShapeError(f"{where}: {name} is {x.dtype} but the module's parameters are {like.dtype}; "
                             f"convert one of them (module.to({x.dtype}) or {name}.to({like.dtype}))")


def _shape_text(shape, layout: str) -> str:
    if shape is None:
        return ""
    dims = ", ".join("*" if s is None else str(s) for s in shape)
    return f" {layout or ''}({dims})".replace("  ", " ")


def check_width(where: str, name: str, value: Any) -> int:
    """A width (``d_model``, ``embed_dim``): an ``int`` (not bool) >= 1, within the width limit."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise CanvasTypeError(f"{where}: {name} must be a positive int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise SchemaError(f"{where}: {name} must be >= 1, got {value}")
    check_size("width", value, f"{where} {name}")
    return value


def check_count(where: str, name: str, value: Any, *, minimum: int = 1, limit: Optional[str] = None) -> int:
    """An integer count (heads, loops, batch) >= ``minimum``, within ``limit`` when given."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise CanvasTypeError(f"{where}: {name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise SchemaError(f"{where}: {name} must be >= {minimum}, got {value}")
    if limit is not None:
        check_size(limit, value, f"{where} {name}")
    return value


def check_finite_number(where: str, name: str, value: Any, *, positive: bool = False,
                        nonneg: bool = False, maximum: Optional[float] = None) -> float:
    """A real, finite number (``beta``, ``dropout``, a weight); bounds as asked."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            import numpy as np

            ok = isinstance(value, (np.integer, np.floating))
        except ImportError:  # pragma: no cover
            ok = False
        if not ok:
            raise CanvasTypeError(f"{where}: {name} must be a number, got {value!r} ({type(value).__name__})")
    f = float(value)
    if not math.isfinite(f):
        raise SchemaError(f"{where}: {name} must be finite, got {f}")
    if positive and f <= 0:
        raise SchemaError(f"{where}: {name} must be > 0, got {f}")
    if nonneg and f < 0:
        raise SchemaError(f"{where}: {name} must be >= 0, got {f}")
    if maximum is not None and f > maximum:
        raise SchemaError(f"{where}: {name} must be <= {maximum}, got {f}")
    return f


def check_region_names(where: str, name: str, value: Any) -> frozenset:
    """A collection of region names: a str is refused (``'ab'`` is not ``{'a', 'b'}``)."""
    if isinstance(value, (str, bytes)):
        raise CanvasTypeError(f"{where}: {name} must be a set or list of region names, got the string "
                              f"{reprlib.repr(value)}; write {{{reprlib.repr(value)}}} for one region")
    if isinstance(value, torch.Tensor):  # iterating it would give its rows
        raise CanvasTypeError(f"{where}: {name} must be a set or list of region names, got a tensor of "
                              f"shape {tuple(value.shape)}")
    try:
        names = frozenset(value)
    except TypeError:
        raise CanvasTypeError(f"{where}: {name} must be a set or list of region names, got "
                              f"{type(value).__name__}") from None
    odd = [n for n in names if not isinstance(n, str)]
    if odd:
        shown = ", ".join(f"{type(n).__name__} {reprlib.repr(n)}" if not isinstance(n, torch.Tensor)
                          else f"a tensor of shape {tuple(n.shape)}" for n in odd[:3])
        raise CanvasTypeError(f"{where}: {name} must hold region names (strings), got {shown}"
                              + (f" and {len(odd) - 3} more" if len(odd) > 3 else ""))
    return names


def check_allocation(where: str, shape: Sequence[int], itemsize: int = 4) -> None:
    """Refuse a tensor over the element limit, naming ``where`` (see ``schema.limits``)."""
    check_elements(shape, where, itemsize)


__all__.append("check_allocation")


class allocating:
    """``with allocating(where, shape):`` around a large allocation: an allocator failure (torch's
    "can't allocate memory" / "out of memory", or ``MemoryError``) becomes a ``SizeLimitError``
    naming ``where``, the shape and its size, instead of a raw allocator error."""

    def __init__(self, where: str, shape: Sequence[int], itemsize: int = 4) -> None:
        self.where, self.shape, self.itemsize = where, tuple(int(s) for s in shape), itemsize

    def __enter__(self) -> "allocating":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None:
            return False
        text = str(exc).lower()
        if type(exc).__name__ == "OutOfMemoryError":  # torch's device OOM: callers catch it by type
            return False
        oom = isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and (
            "can't allocate memory" in text or "out of memory" in text or "cannot allocate memory" in text))
        if not oom:
            return False
        import math

        from canvas_core.errors import SizeLimitError

        n = math.prod(self.shape)
        raise SizeLimitError(
            f"{self.where}: the machine could not allocate a tensor of shape {self.shape} ({n:,} elements, "
            f"~{n * self.itemsize / 2**30:.2f} GiB); use a smaller size (batch, canvas or width)") from None


__all__.append("allocating")


def refuse_unbindable_call(model: torch.nn.Module, inputs: Sequence[Any], kwargs: Dict[str, Any],
                           exc: BaseException, where: str) -> None:
    """After ``model(*inputs, **kwargs)`` raised ``exc`` (a ``TypeError``) inside ``where(model,
    ...)``: when ``model.forward`` cannot take those inputs, raise a :class:`CanvasTypeError` with the
    signature it wants.  Left with the model's own error: a ``TypeError`` raised inside forward's
    own code, a model with its own ``__call__`` or with pre-hooks (global ones too: they may supply
    inputs), and a signature Python cannot read.  A decorator's signature is the one checked,
    unless it is a pure ``(*args, **kwargs)`` wrapper (``torch.no_grad``), whose inner one is."""
    nn_module = torch.nn.modules.module
    try:
        hooks = model._forward_pre_hooks or getattr(nn_module, "_global_forward_pre_hooks", None)
        inner, tb, ran = getattr(inspect.unwrap(type(model).forward), "__code__", None), exc.__traceback__, False
        while tb is not None and not ran:
            ran, tb = tb.tb_frame.f_code is inner, tb.tb_next
        outer = inspect.signature(model.forward, follow_wrapped=False)
        pure = all(q.kind in (q.VAR_POSITIONAL, q.VAR_KEYWORD) for q in outer.parameters.values())
        own = hooks or ran or type(model).__call__ is not torch.nn.Module.__call__
        sig = None if own else (inspect.signature(model.forward) if pure else outer)
    except (TypeError, ValueError):
        sig = None
    try:
        sig is None or sig.bind(*inputs, **kwargs)
    except TypeError as bad:
        name, empty = type(model).__name__, inspect.Parameter.empty
        sig = sig.replace(parameters=[q.replace(annotation=empty) for q in sig.parameters.values()],
                          return_annotation=empty)
        raise CanvasTypeError(
            f"{where}({name}, ...): {name}.forward{sig} cannot take the inputs given ({bad}); pass "
            f"the model's inputs after it, as {where}(model, *inputs, **kwargs) runs model(*inputs, "
            f"**kwargs), e.g. {where}(layer, x) with x a (B, N, D) canvas") from bad
