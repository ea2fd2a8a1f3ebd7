"""Size limits: work and memory that cannot fit are refused before anything is allocated.

Every limit is an environment variable, read each time a size is checked (so a test or a job
script can change it at any moment); docs/limits.md lists them. A size over its limit raises
:class:`~canvas_core.errors.SizeLimitError` naming the object, the size, the limit and the
variable that raises it. Pure Python (layer 1): the runtime, the file readers and the CLI all
call the same checks.
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, Iterable

from canvas_core.errors import LimitSettingError, SizeLimitError

__all__ = ["LIMITS", "limit", "size_limits", "check_size", "check_elements", "check_bytes"]

#: name -> (environment variable, default, what it bounds)
LIMITS: Dict[str, tuple] = {
    "positions": ("CANVAS_MAX_POSITIONS", 1 << 24, "positions of one canvas (T * prod(spatial_shape))"),
    "width": ("CANVAS_MAX_WIDTH", 1 << 16, "width of a canvas or layer (d_model, embed_dim)"),
    "batch": ("CANVAS_MAX_BATCH", 1 << 20, "batch size of one canvas tensor"),
    "loops": ("CANVAS_MAX_LOOPS", 1024,
              "loop count of a looped block (max_loops) or inner steps of a clock (max_inner_steps)"),
    "slots": ("CANVAS_MAX_SLOTS", 1 << 20, "identity slots of one binder (slot_capacity, n_slots)"),
    "elements": ("CANVAS_MAX_ELEMENTS", 1 << 33, "elements of one tensor canvas-core allocates"),
    "bytes": ("CANVAS_MAX_BYTES", 8 << 30,
              "bytes of one structure built from a declaration (a plan's segment grid, a binder's slot bank)"),
    "file_bytes": ("CANVAS_MAX_FILE_BYTES", 64 << 20, "bytes read from one schema or program file"),
    "regions": ("CANVAS_MAX_REGIONS", 1 << 16, "regions of one layout"),
    "connections": ("CANVAS_MAX_CONNECTIONS", 1 << 18, "connections of one topology"),
    "plugin_import_s": ("CANVAS_PLUGIN_IMPORT_WARN_S", 5, "seconds a plugin import runs before it is reported"),
}


#: limits that may be fractional (seconds); every other one is an integer count
_FRACTIONAL = ("plugin_import_s",)


def limit(name: str) -> Any:
    """The limit in force for ``name`` (a key of :data:`LIMITS`): its environment variable when
    set to a positive integer (a positive number for seconds), else the default. A malformed value
    is a ``SizeLimitError`` naming the variable."""
    var, default, what = LIMITS[name]
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return default
    kind = float if name in _FRACTIONAL else int
    try:
        value = kind(raw.strip().replace("_", ""))
    except ValueError:
        value = 0
    if not value > 0 or value != value or value == float("inf"):
        raise LimitSettingError(f"environment variable {var}={raw!r} must be a positive "
                             f"{'number' if kind is float else 'integer'} (the limit on {what}; default "
                             f"{default}); fix or unset it")
    return value


def size_limits() -> Dict[str, int]:
    """Every limit in force now, ``{"positions": ..., "width": ..., ...}``."""
    return {name: limit(name) for name in LIMITS}


def check_size(name: str, value: Any, what: str, fix: str = "Use a smaller size") -> None:
    """Refuse ``value`` over the ``name`` limit, naming ``what`` (e.g. ``"CanvasLayout T*H*W"``);
    ``fix`` is the advice given before the variable that raises the limit."""
    cap = limit(name)
    if isinstance(value, int) and value > cap:
        var, _, meaning = LIMITS[name]
        raise SizeLimitError(
            f"{what} = {value:,} exceeds the limit {cap:,} on the {meaning}; refused before "
            f"allocating anything. {fix}, or raise the limit with {var}=<n> if the "
            "machine really has room for it")


def check_elements(shape: Iterable[int], what: str, itemsize: int = 4) -> None:
    """Refuse a tensor of ``shape`` over the ``elements`` limit, naming ``what`` and its bytes."""
    dims = [int(s) for s in shape]
    n = math.prod(dims)
    cap = limit("elements")
    if n > cap:
        var = LIMITS["elements"][0]
        raise SizeLimitError(
            f"{what} would be a tensor of shape {tuple(dims)} = {n:,} elements (~{_human(n * itemsize)}), "
            f"over the limit of {cap:,} elements; refused before allocating. Use a smaller canvas, "
            f"width or batch, or raise the limit with {var}=<n> if the machine really has room for it")


def _human(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes} B"  # pragma: no cover


def check_bytes(nbytes: int, what: str, fix: str, share: int = 1) -> None:
    """Refuse to build ``what`` when its ``nbytes`` exceed ``1/share`` of the ``bytes`` limit
    (``CANVAS_MAX_BYTES``, 8 GiB by default): the element limit bounds one tensor's elements, this
    the bytes of one structure built from a declaration, whatever its dtype.  ``fix`` is the
    advice given before the variable that raises the limit."""
    cap = limit("bytes") // share
    if nbytes > cap:
        part = "" if share == 1 else f"1/{share} of "
        raise SizeLimitError(f"{what} would take {_human(nbytes)} ({nbytes:,} bytes), over its budget of "
                             f"{_human(cap)} ({part}the byte limit); refused before allocating. {fix}, or raise "
                             f"the limit with {LIMITS['bytes'][0]}=<n> if the machine really has room")
