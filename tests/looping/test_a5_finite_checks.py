"""The four "finite real number" checks of the loops (``gate_init_bias`` of the graft and of
``LoopedBlockWrapper``, ``exit_tol``, the schedules' numbers) share one conversion,
``loop_engine.real_number``: every one refuses the same non-numbers and out-of-range numbers with
its own ``CanvasError`` (a number whose ``float()`` fails used to leak a ``TypeError`` from three
of them), and accepts the same numbers."""

from __future__ import annotations

import numbers
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from canvas_core.errors import BackboneError, CanvasError, SchemaError
from canvas_core.looping import graft, schedules, wrapper
from canvas_core.looping.loop_engine import check_exit_tol, real_number


class _NoFloat:
    """Registered as a real number, but ``float()`` of it fails."""

    def __float__(self) -> float:
        raise TypeError("no float for you")

    def __repr__(self) -> str:
        return "_NoFloat()"


numbers.Real.register(_NoFloat)

CHECKS = {
    "graft": (lambda v: graft._check_gate_init_bias(v, nn.Linear(2, 2)), BackboneError, "gate_init_bias"),
    "wrapper": (lambda v: wrapper._finite_gate(v, 3), BackboneError, r"block 3\): gate_init_bias"),
    "exit_tol": (lambda v: check_exit_tol(v, "set_loops"), BackboneError, "set_loops: exit_tol"),
    "schedule": (lambda v: schedules._check_real("Sched", "mean", v), SchemaError, "Sched: mean"),
}


@pytest.mark.parametrize("value", [_NoFloat(), 10 ** 400, -10 ** 400, Fraction(10 ** 400), float("nan"),
                                   float("inf"), np.float64("nan"), True, None, "1", 1 + 0j])
@pytest.mark.parametrize("check", sorted(CHECKS))
def test_every_check_refuses_with_its_own_error(check, value):
    fn, error, words = CHECKS[check]
    with pytest.raises(error, match=words) as info:
        fn(value)
    assert isinstance(info.value, CanvasError)


@pytest.mark.parametrize("value", [1, 0.25, np.float32(2.0), np.int64(3), Fraction(1, 2)])
@pytest.mark.parametrize("check", sorted(CHECKS))
def test_every_check_accepts_real_numbers(check, value):
    fn, _, _ = CHECKS[check]
    assert fn(value) == float(value)


def test_real_number_conversion():
    assert real_number(np.float16(0.5)) == 0.5
    assert real_number(10 ** 400) == float("inf") and real_number(-10 ** 400) == float("inf")
    assert real_number(_NoFloat()) == float("inf")
    assert real_number(True) is None and real_number("1") is None and real_number(torch.tensor(1.0)) is None
    nan = real_number(float("nan"))
    assert nan != nan
