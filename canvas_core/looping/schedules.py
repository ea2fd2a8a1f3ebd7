"""Loop-count curriculum and loop-indexed attention sharpening."""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Iterable

from canvas_core.errors import CanvasTypeError, SchemaError, SizeLimitError
from canvas_core.looping.loop_engine import real_number
from canvas_core.schema._validate import is_int

__all__ = ["CurriculumScheduler", "SharpeningSchedule", "RandomDepthScheduler"]


def _check_int(name: str, value, lo: int) -> int:
    if not is_int(value) or value < lo:  # numpy integers too, as the schema takes them
        raise SchemaError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)


class ScheduleLoopLimitError(SchemaError, SizeLimitError):
    """A schedule's ``max_loops`` over ``CANVAS_MAX_LOOPS``: a bad schedule argument
    (``SchemaError``, as every other one) and a size over its limit (``SizeLimitError``, as
    ``graft_looped_blocks`` and ``set_loops`` raise for the same count)."""


def _check_max_loops(owner: str, value) -> int:
    """``max_loops`` of a schedule: an int in ``1 .. CANVAS_MAX_LOOPS`` (1,024 by default), the
    limit ``set_loops`` and ``graft_looped_blocks`` enforce. No looped part can run more, and a
    larger count made ``RandomDepthScheduler`` draw (and ``SharpeningSchedule.betas()`` list)
    that many values before failing, or never return."""
    from canvas_core.schema.limits import LIMITS, limit

    n = _check_int(f"{owner}: max_loops", value, 1)
    cap = limit("loops")
    if n > cap:
        raise ScheduleLoopLimitError(
            f"{owner}: max_loops={n:,} exceeds the loop limit {cap:,} that set_loops and "
            f"graft_looped_blocks enforce (no looped part can run that many loops); pass "
            f"max_loops <= {cap:,}, or raise the limit with {LIMITS['loops'][0]}=<n>")
    return n


def _check_real(owner: str, name: str, value, hi: float = math.inf, what: str = "") -> float:
    """A Python / numpy real number ``0 < value <= hi``, finite as a float (an int past 1.8e308
    does not convert); ``what`` says why ``hi``."""
    v = real_number(value)  # numpy floats too
    if v is not None and 0 < v <= hi and v != math.inf:
        return v
    bound = f" and <= {hi:g}{what}" if hi != math.inf else ""
    raise SchemaError(f"{owner}: {name} must be a finite number > 0{bound}, got {value!r}")


_FLOAT_STEPS = 2 ** 53  # step counts up to this are exact as floats


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
        self.max_loops = _check_max_loops("CurriculumScheduler", max_loops)
        self.total_steps = _check_int("total_steps", total_steps, 1)
        # numpy scalars too (np.float32 is no float subclass), as max_loops takes numpy ints
        if (isinstance(warmup_fraction, bool) or not isinstance(warmup_fraction, numbers.Real)
                or not 0 <= warmup_fraction < 1):
            raise SchemaError(f"warmup_fraction must be in [0, 1), got {warmup_fraction!r}")
        self.warmup_fraction = float(warmup_fraction)

    def get_loops(self, step: int) -> int:
        """Number of loops at training step ``step`` (an int >= 0)."""
        step = _check_int("step", step, 0)
        if step >= self.total_steps:  # past the end (also a step too large for a float)
            return self.max_loops
        if self.total_steps > _FLOAT_STEPS:  # exact: a float of the step count may round or overflow
            warm = Fraction(self.warmup_fraction) * self.total_steps
        else:
            warm = self.warmup_fraction * self.total_steps
        if step < warm:
            return 1
        progress = (step - warm) / (self.total_steps - warm)
        return min(self.max_loops, 1 + int(math.floor(progress * self.max_loops)))

    def step(self, looped_blocks: Iterable, step: int) -> int:
        """Set every looped part to ``get_loops(step)`` loops, by the rule of ``set_loops`` (span
        and model scopes run the count, also past the ``max_loops`` they were grafted with;
        block-scope blocks clamp to theirs), and return the count they run. ``looped_blocks`` may
        also be the grafted model (any scope)."""
        return _apply_loops(looped_blocks, self.get_loops(step), "CurriculumScheduler.step")

    def __repr__(self) -> str:
        return (
            f"CurriculumScheduler(max_loops={self.max_loops}, total_steps={self.total_steps}, "
            f"warmup_fraction={self.warmup_fraction})"
        )


def _parts_of(obj):
    """The looped parts in ``obj``: a part itself, the parts of a grafted model or of a module
    holding blocks (a block list after any scope: a span's members are not parts), else ``obj``
    (a list of parts, checked by the caller)."""
    if hasattr(obj, "set_loops"):
        return [obj]
    if not (hasattr(obj, "modules") and hasattr(obj, "named_parameters")):  # not a torch module
        return obj
    from canvas_core.looping.scopes import loop_parts_of

    parts = loop_parts_of(obj)
    if parts:
        return parts
    if hasattr(obj, "__iter__") and len(list(obj)):  # a list module of blocks of another kind
        return list(obj)
    raise CanvasTypeError(
        f"{type(obj).__name__} has no looped part; graft it first (graft_looped_blocks) or pass "
        "the looped blocks it returned")


def _apply_loops(looped, n: int, where: str) -> int:
    """Set ``n`` loops on every part of ``looped`` (a grafted model, a part, or a list of parts)
    by the rule of ``set_loops``: span and model loops run ``n``, canvas-core's block-scope
    wrappers clamp to their ``max_loops``, a ``wrapper_class=`` wrapper gets ``set_loops(n)`` and
    applies its own rule. Returns the count the parts run (the largest, if they differ). Every
    part is checked before any is set."""
    parts = _parts_of(looped)
    if isinstance(parts, (str, bytes)) or not hasattr(parts, "__iter__"):
        raise CanvasTypeError(
            f"{where} expects the grafted model or the list of looped blocks returned by "
            f"graft_looped_blocks, got {type(parts).__name__}")
    parts = list(parts)
    if not parts:  # nothing to set: the scheduled count, as canvas-engineering returns it
        return n
    for b in parts:
        if not callable(getattr(b, "set_loops", None)):
            raise CanvasTypeError(f"{where} expects looped blocks with set_loops(n); got {type(b).__name__}")
    from canvas_core.looping.scopes import apply_loops_atomically

    # each part's own rule, as set_loops(model, n) applies it; all or nothing
    apply_loops_atomically(parts, lambda b: b.set_loops(n))
    ran = []
    for b in parts:
        cur = getattr(b, "current_loops", None)
        ran.append(cur if isinstance(cur, int) and not isinstance(cur, bool) else n)
    return max(ran)


def step_random(seed: int, step: int):
    """The ``random.Random`` of training step ``step`` under ``seed``: seeded from a keyed BLAKE2b
    hash of the pair, so every ``(seed, step)`` gets its own stream (no seed's draws are another
    seed's shifted by some number of steps, as ``seed * constant + step`` would make them) and a
    given pair always gets the same one (no dependence on the process or ``PYTHONHASHSEED``)."""
    import hashlib
    import random

    def text(n: int) -> str:  # decimal; hex past Python's 4,300-digit int -> str limit
        return str(n) if n.bit_length() < 14_000 else "0x" + format(n, "x")

    key = f"{text(int(seed))},{text(int(step))}".encode()
    digest = hashlib.blake2b(key, digest_size=16, person=b"canvas-depth").digest()
    return random.Random(int.from_bytes(digest, "big"))


class RandomDepthScheduler:
    """Loop count sampled per training step (randomized depth), reproducible from ``seed``.

    Training with a random iteration count is what lets a recurrent core spend more iterations at
    test time than it was trained with (Huginn, arXiv 2502.05171; retrofitted recurrence,
    arXiv 2511.07384). ``get_loops(step)`` depends only on ``(seed, step)``, so a resumed run draws
    the same counts. ``distribution``:

    * ``"uniform"``: uniform on ``min_loops .. max_loops``;
    * ``"lognormal_poisson"`` (Huginn's): ``tau ~ Normal(log(mean) - sigma^2 / 2, sigma)``,
      ``n = 1 + Poisson(exp(tau))``, clipped to ``min_loops .. max_loops``; its mean is about
      ``mean + 1`` before clipping, with a heavy right tail.

    Example::

        depth = RandomDepthScheduler(max_loops=8, distribution="lognormal_poisson", mean=3, seed=0)
        for it in range(steps):
            n = depth.step(model, it)          # sets the loops of every looped part
    """

    DISTRIBUTIONS = ("uniform", "lognormal_poisson")
    #: the largest ``sigma``: past it ``sigma^2 / 2`` outgrows any ``log(mean)`` (every draw 1 or
    #: ``max_loops``), and past ~1.3e154 it overflows a float
    MAX_SIGMA = 100.0

    def __init__(self, max_loops: int = 4, distribution: str = "uniform", *, min_loops: int = 1,
                 mean: float = 2.0, sigma: float = 0.5, seed: int = 0) -> None:
        self.max_loops = _check_max_loops("RandomDepthScheduler", max_loops)
        self.min_loops = _check_int("min_loops", min_loops, 1)
        if self.min_loops > self.max_loops:
            raise SchemaError(f"min_loops ({min_loops}) must be <= max_loops ({max_loops})")
        if distribution not in self.DISTRIBUTIONS:
            raise SchemaError(f"unknown depth distribution {distribution!r}; choose one of "
                              f"{list(self.DISTRIBUTIONS)}")
        mean = _check_real("RandomDepthScheduler", "mean", mean)
        sigma = _check_real("RandomDepthScheduler", "sigma", sigma, self.MAX_SIGMA,
                            " (the spread of log(n - 1); Huginn's is 0.5)")
        self.seed = _check_int("seed", seed, 0)
        self.distribution, self.mean, self.sigma = distribution, mean, sigma

    def get_loops(self, step: int) -> int:
        """The loop count of training step ``step`` (an int >= 0)."""
        step = _check_int("step", step, 0)
        rng = step_random(self.seed, step)
        if self.distribution == "uniform":
            return rng.randint(self.min_loops, self.max_loops)
        tau = rng.gauss(math.log(self.mean) - self.sigma ** 2 / 2, self.sigma)
        lam, k = math.exp(min(tau, 700.0)), 0  # exp overflows past ~709.8 (a huge mean)
        # Knuth's Poisson sampler; exp(-lam) underflows to 0 past lam ~ 745 (the draws then stop
        # near 745), so a large lam is drawn as a sum of Poisson(<= 500) parts: the same law.
        # Counting stops once 1 + k reaches max_loops (clipped anyway), so a draw takes at most
        # about max_loops uniforms (<= CANVAS_MAX_LOOPS) whatever mean and sigma are.
        top = self.max_loops - 1
        while lam > 0 and k < top:
            part = min(lam, 500.0)
            lam -= part
            p, limit = 1.0, math.exp(-part)
            while k < top:
                p *= rng.random()
                if p <= limit:
                    break
                k += 1
        return min(self.max_loops, max(self.min_loops, 1 + k))

    def step(self, looped, step: int) -> int:
        """Set every looped part (blocks, span, model loop; or the grafted model) to
        ``get_loops(step)`` loops, by the rule of ``set_loops`` (block-scope blocks clamp to their
        ``max_loops``), and return the count they run."""
        return _apply_loops(looped, self.get_loops(step), "RandomDepthScheduler.step")

    def __repr__(self) -> str:
        return (f"RandomDepthScheduler(max_loops={self.max_loops}, distribution={self.distribution!r}, "
                f"min_loops={self.min_loops}, mean={self.mean}, sigma={self.sigma}, seed={self.seed})")


class SharpeningSchedule:
    """Inverse temperature ``beta`` of attention as a function of the loop index.

    Attention logits are multiplied by ``beta`` (``softmax(beta * q.k / sqrt(d))``): early loops
    soft, later loops sharp. ``schedule``:

    * ``"linear"``: ``beta_min + (beta_max - beta_min) * i / (max_loops - 1)``
    * ``"cosine"``: ``beta_min + (beta_max - beta_min) * (1 - cos(pi * i / (max_loops - 1))) / 2``
    * ``"exponential"``: ``beta_min * (beta_max / beta_min) ** (i / (max_loops - 1))``
    * ``"constant"``: ``beta_min`` at loop 0, ``beta_max`` at every later loop (the sharpening is
      constant over the extra loops; loop 0 is the backbone's own pass, as for every schedule)

    Loop indices past ``max_loops - 1`` are clamped to the last loop. With one loop, beta is
    ``beta_min``. Every schedule runs loop 0 at ``beta_min``, so ``beta_min = 1`` keeps loop 0
    identical to the backbone (and a graft with gates at 0 identical at every loop count).

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
        self.max_loops = _check_max_loops("SharpeningSchedule", max_loops)
        beta_min = _check_real("SharpeningSchedule", "beta_min", beta_min)
        beta_max = _check_real("SharpeningSchedule", "beta_max", beta_max)
        if schedule not in self.SCHEDULES:
            raise SchemaError(
                f"unknown sharpening schedule {schedule!r}; choose one of {list(self.SCHEDULES)}"
            )
        self.beta_min, self.beta_max, self.schedule = float(beta_min), float(beta_max), schedule

    def __call__(self, loop_idx: int) -> float:
        i = min(_check_int("loop_idx", loop_idx, 0), self.max_loops - 1)
        if self.max_loops == 1 or i == 0:
            return self.beta_min
        if i == self.max_loops - 1:  # exactly beta_max (lo + (hi - lo) gave 0.0 for lo >> hi)
            return self.beta_max
        if self.schedule == "constant":
            return self.beta_max
        x = i / (self.max_loops - 1)
        lo, hi = self.beta_min, self.beta_max
        if self.schedule == "linear":
            return lo + (hi - lo) * x
        if self.schedule == "cosine":
            # (1 - cos) / 2 first: the same value, but (hi - lo) * (1 - cos) overflowed near 1e308
            return lo + (hi - lo) * ((1.0 - math.cos(math.pi * x)) / 2.0)
        ratio = hi / lo
        if 0.0 < ratio < math.inf:
            return lo * ratio ** x
        # hi / lo over- or underflows (e.g. 1e-308 .. 1e308): the same geometric mean, taken as
        # powers of each end, stays between them (finite, > 0)
        return lo ** (1.0 - x) * hi ** x

    def betas(self) -> list:
        """``[beta(0), ..., beta(max_loops - 1)]``."""
        return [self(i) for i in range(self.max_loops)]

    def __repr__(self) -> str:
        from canvas_core._reprs import sharpening_repr  # canvas-engineering's text

        return sharpening_repr(self)
