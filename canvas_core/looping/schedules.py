"""Loop-count curriculum and loop-indexed attention sharpening."""

from __future__ import annotations

import math
from typing import Iterable

from canvas_core.errors import CanvasTypeError, SchemaError

__all__ = ["CurriculumScheduler", "SharpeningSchedule"]


def _check_int(name: str, value, lo: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise SchemaError(f"{name} must be an int >= {lo}, got {value!r}")
    return value


class CurriculumScheduler:
    """Ramp the loop count from 1 to ``max_loops`` over ``total_steps`` training steps.

    The first ``warmup_fraction * total_steps`` steps run 1 loop; the remaining steps are split
    into ``max_loops`` equal stages running 1, 2, ..., ``max_loops`` loops. Steps past the end
    keep ``max_loops``.

    Example::

        curriculum = CurriculumScheduler(max_loops=3, total_steps=3000)
        for it in range(3000):
            loops = curriculum.step(looped_blocks, it)   # 1 until 999, 2 until 1999, then 3
    """

    def __init__(
        self, max_loops: int = 3, total_steps: int = 5000, warmup_fraction: float = 0.0
    ) -> None:
        self.max_loops = _check_int("max_loops", max_loops, 1)
        self.total_steps = _check_int("total_steps", total_steps, 1)
        if not isinstance(warmup_fraction, (int, float)) or not 0.0 <= warmup_fraction < 1.0:
            raise SchemaError(f"warmup_fraction must be in [0, 1), got {warmup_fraction!r}")
        self.warmup_fraction = float(warmup_fraction)

    def get_loops(self, step: int) -> int:
        """Number of loops at training step ``step`` (an int >= 0)."""
        step = _check_int("step", step, 0)
        warm = self.warmup_fraction * self.total_steps
        if step < warm:
            return 1
        progress = (step - warm) / (self.total_steps - warm)
        return min(self.max_loops, 1 + int(math.floor(progress * self.max_loops)))

    def step(self, looped_blocks: Iterable, step: int) -> int:
        """Set every looped block to ``get_loops(step)`` loops and return that count."""
        n = self.get_loops(step)
        if hasattr(looped_blocks, "set_loops"):  # one block
            looped_blocks = [looped_blocks]
        if not hasattr(looped_blocks, "__iter__"):
            raise CanvasTypeError(
                "CurriculumScheduler.step expects the list of looped blocks returned by "
                f"graft_looped_blocks, got {type(looped_blocks).__name__}"
            )
        for b in looped_blocks:
            setter = getattr(b, "set_loops", None)
            if setter is None:
                raise CanvasTypeError(
                    f"CurriculumScheduler.step expects looped blocks with set_loops(n); got "
                    f"{type(b).__name__}"
                )
            setter(min(n, getattr(b, "max_loops", n)))
        return n

    def __repr__(self) -> str:
        return (
            f"CurriculumScheduler(max_loops={self.max_loops}, total_steps={self.total_steps}, "
            f"warmup_fraction={self.warmup_fraction})"
        )


class SharpeningSchedule:
    """Inverse temperature ``beta`` of attention as a function of the loop index.

    Attention logits are multiplied by ``beta`` (``softmax(beta * q.k / sqrt(d))``): early loops
    soft, later loops sharp. ``schedule``:

    * ``"linear"``: ``beta_min + (beta_max - beta_min) * i / (max_loops - 1)``
    * ``"cosine"``: ``beta_min + (beta_max - beta_min) * (1 - cos(pi * i / (max_loops - 1))) / 2``
    * ``"exponential"``: ``beta_min * (beta_max / beta_min) ** (i / (max_loops - 1))``
    * ``"constant"``: ``beta_max`` at every loop

    Loop indices past ``max_loops - 1`` are clamped to the last loop. With one loop, beta is
    ``beta_min``. ``beta_min = 1`` keeps loop 0 identical to the backbone.

    Example::

        beta = SharpeningSchedule(max_loops=3, beta_min=1.0, beta_max=3.0)
        beta(1)   # -> 2.0, halfway between the first loop and the last
    """

    SCHEDULES = ("linear", "cosine", "exponential", "constant")

    def __init__(
        self,
        max_loops: int = 4,
        beta_min: float = 1.0,
        beta_max: float = 4.0,
        schedule: str = "linear",
    ) -> None:
        self.max_loops = _check_int("max_loops", max_loops, 1)
        for name, v in (("beta_min", beta_min), ("beta_max", beta_max)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0 or math.isinf(v):
                raise SchemaError(f"{name} must be a finite number > 0, got {v!r}")
        if schedule not in self.SCHEDULES:
            raise SchemaError(
                f"unknown sharpening schedule {schedule!r}; choose one of {list(self.SCHEDULES)}"
            )
        self.beta_min, self.beta_max, self.schedule = float(beta_min), float(beta_max), schedule

    def __call__(self, loop_idx: int) -> float:
        i = min(_check_int("loop_idx", loop_idx, 0), self.max_loops - 1)
        if self.schedule == "constant":
            return self.beta_max
        if self.max_loops == 1:
            return self.beta_min
        x = i / (self.max_loops - 1)
        lo, hi = self.beta_min, self.beta_max
        if self.schedule == "linear":
            return lo + (hi - lo) * x
        if self.schedule == "cosine":
            return lo + (hi - lo) * (1.0 - math.cos(math.pi * x)) / 2.0
        return lo * (hi / lo) ** x

    def betas(self) -> list:
        """``[beta(0), ..., beta(max_loops - 1)]``."""
        return [self(i) for i in range(self.max_loops)]

    def __repr__(self) -> str:
        from canvas_core._reprs import sharpening_repr  # canvas-engineering's text

        return sharpening_repr(self)
