"""Upper bounds of :func:`~canvas_core.runtime.verify.verify_structure`'s settings, one set for the
Python API and ``canvas verify`` (whose ``--layers`` / ``--probes`` stop at the same numbers), so that
a typo such as ``layers=10**6`` is refused at once instead of probing for hours.

Torch-free on purpose: the CLI reads these before anything heavy is imported.
"""

from __future__ import annotations

from typing import Any, Optional

from canvas_core.errors import SchemaError

__all__ = ["MAX_VERIFY_LAYERS", "MAX_VERIFY_PROBES", "MAX_VERIFY_D_MODEL", "check_limits"]

#: most layers a declared pattern composes (``layers=``, ``canvas verify --layers``): the CLI builds a
#: full set of modules per layer, the API composes one plan per layer into the L-hop closure
MAX_VERIFY_LAYERS = 256
#: most random restarts per query (``probes=``, ``--probes``): each adds a backward pass per probed
#: query (64 already take minutes on the 320-position bundled example)
MAX_VERIFY_PROBES = 256
#: widest probe input ``d_model=`` takes: wider than any model's hidden size, and a (b, N, D) draw past
#: it asks for gigabytes per probe (``canvas verify --width`` builds its own layers, so it stops lower)
MAX_VERIFY_D_MODEL = 65536


def _over(name: str, value: Any, limit: int, what: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value > limit:
        raise SchemaError(f"verify_structure: {name}={value} is over the limit of {limit} ({what}); "
                          f"pass {name}=K with 1 <= K <= {limit}")


def check_limits(layers: Optional[int], probes: int, d_model: Optional[int]) -> None:
    """``SchemaError`` naming the setting, its limit and the fix when ``layers``, ``probes`` or
    ``d_model`` (integers >= 1 already checked, or None) is above its bound."""
    _over("layers", layers, MAX_VERIFY_LAYERS,
          "canvas layers composed into the declared pattern, as canvas verify --layers; the number of canvas "
          "layers the model applies in turn")
    _over("probes", probes, MAX_VERIFY_PROBES,
          "random restarts per query, as canvas verify --probes: each one is another backward pass per "
          "probed query, and one restart already finds a read for generic weights (the default is 2)")
    _over("d_model", d_model, MAX_VERIFY_D_MODEL,
          "the width D of the (b, N, D) probe inputs; leave d_model out to use the model's own width")
