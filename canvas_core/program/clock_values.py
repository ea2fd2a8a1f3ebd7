"""Checks of the plain values that clocks are built from and look at (pure Python, no torch): the
steps of a ``ClockContext``, integers with a minimum, the name of a time domain, an optional
threshold and a residual summary read at a step.  Each returns the value in its checked form or
raises a ``CanvasError`` naming the value and what it must be.  Used by
:mod:`canvas_core.program.clock_ir`."""

from __future__ import annotations

import contextlib
import math
import operator
from typing import Any, NoReturn, Optional

from canvas_core.errors import CanvasTypeError, ProgramError, SchemaError
from canvas_core.program.constants import CLOCK_DOMAINS

__all__ = ["int_at_least", "time_domain", "optional_number", "summary_number"]

_DOMAINS = tuple(sorted(CLOCK_DOMAINS))  # the time domains ClockSpec knows


def _refuse(key: str, want: str, value: Any) -> NoReturn:
    raise CanvasTypeError(f"ClockContext {key} must be {want}, got {type(value).__name__} {value!r:.60}")


def _step(key: str, value: Any) -> int:
    """A ClockContext step as an int: an integer, or a float with no fractional part (10.0 is 10, as
    in canvas-engineering); 2.5 (also as a float tensor), NaN, "3" or True is a CanvasTypeError."""
    if not isinstance(value, (bool, str, bytes)):
        try:
            return operator.index(value)
        except TypeError:  # a float, numpy float or one-element float tensor: integral ones pass
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                if math.isfinite(as_float := float(value)) and as_float.is_integer():
                    return int(as_float)
    _refuse(key, "an integer step (an int, or a float with no fractional part such as 10.0)", value)


def int_at_least(value: Any, what: str, minimum: int) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``, else a SchemaError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SchemaError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def time_domain(value: Any, what: str) -> str:
    """``value`` if it names one of the clock time domains, else a SchemaError."""
    if value not in _DOMAINS:
        raise SchemaError(f"{what}: domain must be one of {_DOMAINS}, got {value!r}")
    return value


def optional_number(value: Any, what: str) -> Optional[float]:
    """None, or ``value`` as a float when it is a real number (not a bool, not NaN)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise SchemaError(f"{what} must be a number (not NaN) or None, got {value!r}")
    try:
        return float(value)
    except OverflowError:  # an int beyond the float range
        raise SchemaError(f"{what} is an integer of {value.bit_length()} bits, beyond the range of a float; "
                          "use a smaller number") from None


def summary_number(value: Any, region: str, kind: str) -> float:
    """A residual summary ``summaries[region][kind]`` as a finite float: a real number or a
    one-element tensor, not a bool or a string (which would compare as something else). Anything
    else is a ``CanvasTypeError``, a NaN or infinity a ``ProgramError``, both naming the key."""
    where = f"summaries[{region!r}][{kind!r}]"
    out, shown = None, ""
    if not isinstance(value, (bool, str, bytes)):
        try:
            out = float(value)
        except OverflowError:  # an int beyond the float range: as unusable as an infinity
            out, shown = math.inf, "an integer beyond the range of a float"
        except (TypeError, ValueError):
            pass
    if out is None:
        raise CanvasTypeError(
            f"{where} must be a number (a float, an int or a one-element tensor, as from "
            f"ResidualAccumulator.summaries()), got {type(value).__name__} {value!r:.80}")
    if not math.isfinite(out):
        raise ProgramError(
            f"{where} is {shown or out}; a clock compares a residual summary with its threshold, so it must be "
            "finite. Drop or replace the non-finite summary before the step (ResidualAccumulator "
            "already skips non-finite errors)")
    return out
