"""The options of a loop part that change what it computes without changing any parameter shape,
as a loop checkpoint records them in its ``structure``: the sharpening schedule and the
``reenter`` callable as text, and a span or model loop's ``update`` / ``iter_norm`` choices.  A file
written before an option was recorded does not name it in its header; such options are left out of
the comparison instead of being read as "not set".  Used by :mod:`canvas_core.looping.checkpoint`."""

from __future__ import annotations

import inspect
import json
from typing import Any, Dict, List, Mapping, Sequence

from torch import nn

#: options recorded in ``structure`` (under ``options``) only when set, and named in the
#: ``recorded_options`` header, so files written before they were recorded still load
RECORDED_OPTIONS = ("sharpening", "reenter")


def _loop_options(part: nn.Module) -> Dict[str, Any]:
    """The options of a span / model loop that change its function without changing any parameter
    shape (only values other than the default, so files of default grafts keep their hash)."""
    out: Dict[str, Any] = _recorded_options(part)
    if getattr(part, "iter_norm", None) is not None:
        out["iter_norm"] = part.iter_norm
    update = getattr(part, "update", "gated")
    if update != "gated":
        out["update"] = update
        if update == "damped":
            out["damping"] = float(part.damping)
    return out


def _recorded_options(part: nn.Module) -> Dict[str, Any]:
    """The sharpening schedule and the ``reenter`` map of a part, as text, when set."""
    out: Dict[str, Any] = {}
    sharp = getattr(part, "sharpening", None)
    if sharp is not None:
        out["sharpening"] = _schedule_text(sharp, int(getattr(part, "max_loops", 1) or 1))
    reenter = getattr(part, "reenter", None)
    if reenter is not None:
        out["reenter"] = _callable_name(reenter)
    return out


def _callable_name(fn: Any) -> str:
    """A function by its name (``tanh``, ``Decoder.decode``), a callable object by its class."""
    if inspect.isbuiltin(fn):  # torch.tanh's __qualname__ names torch's internal class
        return str(fn.__name__)
    return str(getattr(fn, "__qualname__", None) or type(fn).__qualname__)


def _schedule_text(schedule: Any, max_loops: int) -> str:
    """A ``SharpeningSchedule`` as its repr (every parameter); any other callable as its name and
    its betas over the graft's loops (its name alone if it cannot be evaluated here)."""
    from canvas_core.looping.schedules import SharpeningSchedule

    if type(schedule) is SharpeningSchedule:
        return repr(schedule)
    try:
        betas = [float(schedule(i)) for i in range(max_loops)]
    except Exception:  # noqa: BLE001 - a schedule that fails here fails at the forward too
        return _callable_name(schedule)
    return f"{_callable_name(schedule)}(betas={betas})"


def _comparable(structure: Dict[str, Any], known: Sequence[str]) -> Dict[str, Any]:
    """``structure`` without the recorded options a file does not know (written before they were
    recorded): those are not compared."""
    drop = [k for k in RECORDED_OPTIONS if k not in known]
    if not drop:
        return structure
    blocks = []
    for b in structure.get("blocks", []):
        b = dict(b)
        opts = {k: v for k, v in b.get("options", {}).items() if k not in drop}
        b.pop("options", None)
        if opts:
            b["options"] = opts
        blocks.append(b)
    return {**structure, "blocks": blocks}


def _known_options(header: Mapping[str, Any]) -> List[str]:
    try:
        known = json.loads(header.get("recorded_options", "[]") or "[]")
    except (ValueError, RecursionError):
        known = []
    return [k for k in known if isinstance(k, str)] if isinstance(known, list) else []
