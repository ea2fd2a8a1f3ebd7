"""CurriculumScheduler and SharpeningSchedule against independent formulas."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_core.errors import CanvasError, SchemaError
from canvas_core.looping import CurriculumScheduler, SharpeningSchedule


def test_curriculum_seed_example():
    s = CurriculumScheduler(max_loops=3, total_steps=5000)
    assert [s.get_loops(k) for k in (0, 1666, 1667, 3333, 3334, 5000, 9000)] == [
        1,
        1,
        2,
        2,
        3,
        3,
        3,
    ]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 500), st.floats(0, 0.9), st.data())
def test_curriculum_ramp(max_loops, total, warm, data):
    s = CurriculumScheduler(max_loops=max_loops, total_steps=total, warmup_fraction=warm)
    steps = list(range(0, total + 3))
    loops = [s.get_loops(k) for k in steps]
    assert loops[0] == 1 and loops[-1] == max_loops
    assert all(a <= b for a, b in zip(loops, loops[1:]))  # monotone
    assert all(1 <= n <= max_loops for n in loops)
    k = data.draw(st.integers(0, total))
    w = warm * total
    expected = 1 if k < w else min(max_loops, 1 + math.floor((k - w) / (total - w) * max_loops))
    assert s.get_loops(k) == expected


def test_curriculum_step_sets_blocks():
    class B:
        max_loops = 3

        def set_loops(self, n):
            self.n = n

    blocks = [B(), B()]
    s = CurriculumScheduler(3, 30)
    assert s.step(blocks, 25) == 3 and all(b.n == 3 for b in blocks)
    with pytest.raises(CanvasError):
        s.step([object()], 1)


@pytest.mark.parametrize(
    "kw", [dict(max_loops=0), dict(total_steps=0), dict(warmup_fraction=1.0), dict(max_loops=2.5)]
)
def test_curriculum_bad_args(kw):
    with pytest.raises(SchemaError):
        CurriculumScheduler(**kw)
    with pytest.raises(SchemaError):
        CurriculumScheduler().get_loops(-1)


def test_sharpening_readme_values():
    s = SharpeningSchedule(max_loops=3, beta_min=1.0, beta_max=4.0)
    assert s.betas() == [1.0, 2.5, 4.0]
    assert SharpeningSchedule(max_loops=4, beta_min=1.0, beta_max=4.0)(2) == 3.0


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 8),
    st.floats(0.1, 4),
    st.floats(0.1, 10),
    st.sampled_from(["linear", "cosine", "exponential"]),
)
def test_sharpening_endpoints_and_monotone(L, lo, hi, kind):
    s = SharpeningSchedule(L, lo, hi, kind)
    b = s.betas()
    assert math.isclose(b[0], lo, rel_tol=1e-9) and math.isclose(b[-1], hi, rel_tol=1e-9)
    pairs = list(zip(b, b[1:]))
    assert all(x <= y + 1e-12 for x, y in pairs) or all(x >= y - 1e-12 for x, y in pairs)
    assert s(L + 5) == b[-1]  # clamped past the last loop
    if kind == "exponential":
        for i in range(L):
            assert math.isclose(b[i], lo * (hi / lo) ** (i / (L - 1)), rel_tol=1e-9)


def test_sharpening_bad_args():
    with pytest.raises(SchemaError, match="linear"):
        SharpeningSchedule(schedule="step")
    with pytest.raises(SchemaError):
        SharpeningSchedule(beta_min=0)
    with pytest.raises(SchemaError):
        SharpeningSchedule()(-1)
    assert SharpeningSchedule(1, 1.5, 3.0)(0) == 1.5
    # loop 0 is the backbone's own pass (beta_min) for every schedule, "constant" included
    assert SharpeningSchedule(3, 1.0, 2.0, "constant").betas() == [1.0, 2.0, 2.0]
