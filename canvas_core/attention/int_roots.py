"""Integer roots of tensor sizes that ``torch.compile`` can trace.

Under dynamic shapes a size is a symbolic int: ``math.isqrt`` of one stops dynamo ("torch.* op
returned non-Tensor"), and ``round(x ** (1 / 3))`` leaves float powers in the guards, which
dynamo's runtime-assert pass cannot replay.  A bisection over integer comparisons traces (one
guard per step, about ``log2 n`` of them) and runs eagerly in microseconds.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["largest_int", "isqrt"]


def largest_int(ok: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest ``t`` in ``[lo, hi]`` with ``ok(t)``, for ``ok`` true up to some point and
    false after it; ``lo`` when none is (``ok(lo)`` is not evaluated)."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def isqrt(n: int) -> int:
    """``floor(sqrt(n))`` of an int ``n >= 0`` (``math.isqrt``, traceable over symbolic sizes)."""
    return largest_int(lambda r: r * r <= n, 0, n)
