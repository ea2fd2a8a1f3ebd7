"""Small argument checks of the program layer that raise ProgramError / CanvasTypeError."""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

from canvas_core.errors import CanvasTypeError, ProgramError
from canvas_core.schema._validate import _is_numpy_number, check_ordered, is_int

__all__ = ["pos_int", "nonneg_int", "opt_pos_int", "number", "flag", "text", "opt_text", "str_tuple"]


def pos_int(value: Any, where: str, what: str, fix: str = "") -> int:
    if not is_int(value):
        raise CanvasTypeError(f"{where}: {what} must be an integer, got {value!r} ({type(value).__name__})")
    if int(value) < 1:
        raise ProgramError(f"{where}: {what} must be >= 1, got {value}.{(' ' + fix) if fix else ''}")
    return int(value)


def nonneg_int(value: Any, where: str, what: str) -> int:
    if not is_int(value):
        raise CanvasTypeError(f"{where}: {what} must be an integer, got {value!r} ({type(value).__name__})")
    if int(value) < 0:
        raise ProgramError(f"{where}: {what} must be >= 0, got {value}")
    return int(value)


def opt_pos_int(value: Any, where: str, what: str) -> Optional[int]:
    return None if value is None else pos_int(value, where, what, "Use None to disable it.")


def number(value: Any, where: str, what: str, *, nonneg: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_numpy_number(value):
        raise CanvasTypeError(f"{where}: {what} must be a number, got {value!r} ({type(value).__name__})")
    try:
        f = float(value)
    except OverflowError:  # an int past the largest float
        raise ProgramError(f"{where}: {what} must be finite, got an integer past the largest float (1.8e308)") from None
    if not math.isfinite(f):
        raise ProgramError(f"{where}: {what} must be finite, got {f}")
    if nonneg and f < 0:
        raise ProgramError(f"{where}: {what} must be >= 0, got {f}")
    return f


def flag(value: Any, where: str, what: str) -> bool:
    if not isinstance(value, bool):
        raise CanvasTypeError(f"{where}: {what} must be True or False, got {value!r}")
    return value


def text(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CanvasTypeError(f"{where}: {what} must be a non-empty string, got {value!r}")
    return value


def opt_text(value: Any, where: str, what: str) -> Optional[str]:
    return None if value is None else text(value, where, what)


#: the example an ordered-sequence refusal shows, per argument name (others: a generic pair)
_EXAMPLES = {"tags": "('belief', 'object')", "losses": "('next_step', 'masked_prediction')"}


def str_tuple(value: Any, where: str, what: str) -> Tuple[str, ...]:
    """``value`` as a tuple of non-empty strings.  A set (no defined order) or a mapping (its keys
    only) is refused by :func:`~canvas_core.schema._validate.check_ordered`, as elsewhere."""
    check_ordered(value, f"{where}: {what}", _EXAMPLES.get(what, "('a', 'b')"))
    if isinstance(value, str):
        raise CanvasTypeError(
            f"{where}: {what} must be a tuple of strings, got the string {value!r}; write ({value!r},)"
        )
    if not hasattr(value, "__iter__"):
        raise CanvasTypeError(f"{where}: {what} must be a tuple of strings, got {value!r}")
    out = tuple(value)
    for v in out:
        if not isinstance(v, str) or not v:
            raise CanvasTypeError(f"{where}: every entry of {what} must be a non-empty string, got {v!r}")
    return out
