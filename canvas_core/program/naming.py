"""Readable text for a field path (pure Python; the program layer names regions with it)."""

from __future__ import annotations

import re

from canvas_core.errors import CanvasTypeError

__all__ = ["auto_semantic_type"]

_INDEX = re.compile(r"\[(\d+)\]")


def auto_semantic_type(path: str) -> str:
    """Readable semantic type from a dotted field path.

    Every ``"."`` becomes ``" / "``, every list index ``"[k]"`` becomes ``" k"`` and every ``"_"``
    a space; nothing else changes (case, other punctuation and whitespace are kept, so the same
    path always yields the same text as in canvas-engineering, and therefore the same
    embedding)::

        "country_us.macro.output.gdp_nowcast" -> "country us / macro / output / gdp nowcast"
        "financial.yield_curves.ten_year"      -> "financial / yield curves / ten year"
        "firm_AAPL.financials.revenue"         -> "firm AAPL / financials / revenue"
        "arm.joints[3].angle"                  -> "arm / joints 3 / angle"
    """
    if not isinstance(path, str):
        raise CanvasTypeError(f"auto_semantic_type needs a string path, got {type(path).__name__} {path!r}")
    return " / ".join(_INDEX.sub(r" \1", part).replace("_", " ") for part in path.split("."))
