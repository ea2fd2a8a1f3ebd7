"""``set_loops``'s ``exit_tol`` takes numpy scalars as the loop count does, and refuses an int past
float's range with ``BackboneError`` instead of an ``OverflowError``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import canvas_core as cc
from canvas_core.errors import BackboneError

from tests.looping._scope_setup import make_net

torch.set_num_threads(1)


@pytest.mark.parametrize("tol", [np.float32(0.25), np.float16(0.25), np.float64(0.25), 0.25])
def test_exit_tol_takes_numpy_scalars(tol):
    m = make_net()
    (span,), _ = cc.graft_looped_blocks(m, max_loops=2, scope="stack")
    assert cc.set_loops(m, 3, exit_tol=tol) == 3
    assert span.exit_tol == 0.25 and type(span.exit_tol) is float


@pytest.mark.parametrize("tol", [10 ** 400, float("nan"), -1, np.float32("inf"), True, "0.1", None])
def test_bad_exit_tol_is_refused_unchanged(tol):
    m = make_net()
    (span,), _ = cc.graft_looped_blocks(m, max_loops=2, scope="stack")
    with pytest.raises(BackboneError, match=r"exit_tol must be a finite number >= 0"):
        cc.set_loops(m, 3, exit_tol=tol)
    assert span.exit_tol == 0.0 and span.current_loops == 2
