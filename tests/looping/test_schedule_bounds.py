"""The schedulers refuse, when built, arguments they would crash or hang on later; what they accept
they compute finitely and fast.

``RandomDepthScheduler(8, "lognormal_poisson", sigma=1e200).get_loops(0)`` raised a builtin
``OverflowError``; ``max_loops=10**12, mean=1e308`` counted a Poisson draw up to 10**12."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from canvas_core.errors import SchemaError
from canvas_core.looping import CurriculumScheduler, RandomDepthScheduler, SharpeningSchedule


@pytest.mark.parametrize("make", [
    lambda n: RandomDepthScheduler(n),
    lambda n: RandomDepthScheduler(n, "lognormal_poisson", mean=1e308),
    lambda n: CurriculumScheduler(n, 10),
    lambda n: SharpeningSchedule(n),
])
def test_max_loops_is_bounded_by_the_loop_limit(make, monkeypatch):
    monkeypatch.delenv("CANVAS_MAX_LOOPS", raising=False)
    assert make(1024).max_loops == 1024
    for n in (1025, 10**12):
        with pytest.raises(SchemaError, match=r"max_loops=.*limit 1,024.*CANVAS_MAX_LOOPS"):
            make(n)
    monkeypatch.setenv("CANVAS_MAX_LOOPS", "2048")
    assert make(2048).max_loops == 2048


@pytest.mark.parametrize("kw,name", [
    (dict(sigma=1e200), "sigma"), (dict(sigma=100.5), "sigma"), (dict(sigma=0.0), "sigma"),
    (dict(mean=10**400), "mean"), (dict(mean=math.inf), "mean"), (dict(mean=math.nan), "mean"),
    (dict(mean=-1.0), "mean"), (dict(mean=True), "mean"),
])
def test_random_depth_refuses_a_mean_or_sigma_it_cannot_sample(kw, name):
    with pytest.raises(SchemaError, match=f"RandomDepthScheduler: {name} must be"):
        RandomDepthScheduler(8, "lognormal_poisson", **kw)


@pytest.mark.parametrize("kw", [dict(mean=1e308, sigma=0.01), dict(mean=1e308, sigma=100.0),
                                dict(mean=5e-324, sigma=100.0), dict(mean=np.float32(3.0)),
                                dict(mean=1e6, sigma=1e-3)])
def test_lognormal_poisson_draws_are_bounded_in_time(kw):
    s = RandomDepthScheduler(1024, "lognormal_poisson", **kw)
    t0 = time.perf_counter()
    got = [s.get_loops(k) for k in range(200)]
    assert time.perf_counter() - t0 < 2.0
    assert all(1 <= n <= 1024 for n in got)
    if kw.get("sigma") == 0.01:
        assert set(got) == {1024}


def test_curriculum_takes_step_counts_past_a_float():
    c = CurriculumScheduler(3, 10**400, 0.5)
    assert [c.get_loops(k) for k in (0, 10**400 // 2 - 1, 10**400 // 2, 9 * 10**399, 10**400)] == [1, 1, 1, 3, 3]
    assert CurriculumScheduler(3, 10).get_loops(10**400) == 3
    with pytest.raises(SchemaError, match="warmup_fraction"):
        CurriculumScheduler(3, 10, True)


@pytest.mark.parametrize("lo,hi,kind", [(1e-308, 1e308, "exponential"), (5e-324, 1e308, "exponential"),
                                        (1e308, 1e-308, "exponential"), (1.7e308, 1e-300, "cosine"),
                                        (1e10, 1e-10, "linear"), (1e-300, 1.7e308, "linear")])
def test_sharpening_betas_stay_finite_and_end_at_beta_max(lo, hi, kind):
    b = SharpeningSchedule(4, lo, hi, kind).betas()
    assert b[0] == lo and b[-1] == hi
    assert all(0 < v < math.inf for v in b)
    assert all(min(lo, hi) <= v <= max(lo, hi) for v in b)


def test_sharpening_refuses_betas_that_are_not_finite_floats():
    for v in (10**400, math.inf, math.nan, 0, -1.0, True):
        with pytest.raises(SchemaError, match="SharpeningSchedule: beta_max must be"):
            SharpeningSchedule(4, 1.0, v)
    assert SharpeningSchedule(4, np.float32(1.0), 2.0).betas()[0] == 1.0


def test_a_poisson_draw_stops_counting_at_max_loops(monkeypatch):
    """A draw takes about max_loops uniforms, not a whole Poisson(500) part past the clip."""
    import random

    from canvas_core.looping import schedules

    calls = []

    class Counting(random.Random):
        def random(self):
            calls.append(1)
            return super().random()

    monkeypatch.setattr(schedules, "step_random", lambda seed, step: Counting(seed * 1000 + step))
    s = RandomDepthScheduler(3, "lognormal_poisson", mean=1e308, sigma=0.01)
    for k in range(20):
        calls.clear()
        assert s.get_loops(k) == 3
        assert len(calls) <= 3 + 2  # the two of the Gaussian draw, then at most max_loops - 1


def test_the_loop_limit_error_is_also_a_size_limit_error():
    from canvas_core.errors import SizeLimitError

    with pytest.raises(SizeLimitError, match="RandomDepthScheduler: max_loops"):
        RandomDepthScheduler(10**6)
