"""Small type checks shared by the schema dataclasses (pure Python)."""

from __future__ import annotations

import math
from typing import Any

from canvas_core.errors import CanvasTypeError, SchemaError


def is_int(value: Any) -> bool:
    """True for real integers (``bool`` is not accepted as an integer)."""
    return isinstance(value, int) and not isinstance(value, bool) or _is_numpy_int(value)


def _is_numpy_int(value: Any) -> bool:
    t = type(value)
    return t.__module__ == "numpy" and t.__name__.startswith(("int", "uint"))


def as_int(value: Any, what: str) -> int:
    if not is_int(value):
        raise CanvasTypeError(f"{what} must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)


def as_float(value: Any, what: str, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_numpy_number(value):
        raise CanvasTypeError(f"{what} must be a number, got {value!r} ({type(value).__name__})")
    f = float(value)
    if not math.isfinite(f):
        raise SchemaError(f"{what} must be finite, got {f}")
    if positive and f <= 0:
        raise SchemaError(f"{what} must be > 0, got {f}")
    if nonneg and f < 0:
        raise SchemaError(f"{what} must be >= 0, got {f}")
    return f


def _is_numpy_number(value: Any) -> bool:
    t = type(value)
    return t.__module__ == "numpy" and t.__name__.startswith(("int", "uint", "float"))


def as_str(value: Any, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise CanvasTypeError(f"{what} must be a string, got {value!r} ({type(value).__name__})")
    if not allow_empty and not value.strip():
        raise SchemaError(f"{what} must be a non-empty string")
    return value


def as_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise CanvasTypeError(f"{what} must be True or False, got {value!r}")
    return value
