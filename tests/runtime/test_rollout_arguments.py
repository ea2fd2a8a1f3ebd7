"""The keyword arguments of ``incremental`` are checked, not converted: ``width`` is a positive int
(numpy integers too; no bool, float or string, which ``int()`` would turn into some other width),
``slide`` one of its choices (an array is refused, not compared elementwise), ``check`` a bool or
a real tolerance > 0 (numpy scalars too)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import canvas_core
from canvas_core.errors import CanvasTypeError
from canvas_core.runtime.canvas_attention import CanvasAttention
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection

torch.set_num_threads(1)

LAYOUT = CanvasLayout(T=2, spatial_shape=(2,), d_model=8, regions={"a": (0, 2, 0, 2)})
TOPO = CanvasTopology([Connection("a", "a", t_src=0, t_dst=0)])


def _model(in_width=8):
    torch.manual_seed(0)
    layers = [nn.Linear(in_width, 8)] if in_width != 8 else []
    return nn.Sequential(*layers, CanvasAttention(TOPO, LAYOUT, n_heads=2)).eval()


@pytest.mark.parametrize("width", [0, -3, "8", "4", 2.7, 4.0, True, False, [4]])
def test_a_width_that_is_not_a_positive_int_is_refused(width):
    with pytest.raises(CanvasTypeError, match=r"incremental\(width=.*an int >= 1"):
        canvas_core.incremental(_model(4), LAYOUT, width=width)


@pytest.mark.parametrize("width", [4, np.int64(4), np.int32(4), np.uint8(4)])
def test_int_widths_are_taken_and_steps_use_them(width):
    model = _model(4)
    with torch.no_grad(), canvas_core.incremental(model, LAYOUT, width=width) as roll:
        assert roll.width == 4 and type(roll.width) is int
        assert roll.step(torch.randn(1, 2, 4)).shape == (1, 2, 8)


def test_the_default_width_is_d_model():
    with canvas_core.incremental(_model(), LAYOUT) as roll:
        assert roll.width == LAYOUT.d_model


@pytest.mark.parametrize("slide", [np.array([1, 2]), np.array(["recompute"]), ["recompute"], "Recompute", 1])
def test_a_slide_that_is_not_a_choice_is_refused(slide):
    with pytest.raises(CanvasTypeError, match=r"incremental\(slide=.*choose one of"):
        canvas_core.incremental(_model(), LAYOUT, slide=slide)


@pytest.mark.parametrize("check", [np.float32(1e-3), np.float64(1e-3), 1e-3, 1])
def test_real_tolerances_are_taken(check):
    assert canvas_core.incremental(_model(), LAYOUT, check=check).check_tol == pytest.approx(float(check))


@pytest.mark.parametrize("check", [np.bool_(True), float("nan"), float("inf"), -1, 0, "1e-3",
                                   np.array([1e-3]), torch.tensor(1e-3)])
def test_other_checks_are_refused(check):
    with pytest.raises(CanvasTypeError, match=r"incremental\(check="):
        canvas_core.incremental(_model(), LAYOUT, check=check)
