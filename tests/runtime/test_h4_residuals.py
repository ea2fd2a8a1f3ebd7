"""ResidualAccumulator: a finite error whose summary overflows is skipped like a NaN error, and
an accumulator built under ``torch.inference_mode`` can be updated outside it."""

from __future__ import annotations

import pytest
import torch

from canvas_core.runtime.residuals import ResidualAccumulator


@pytest.mark.parametrize("half", [False, True])
def test_an_error_that_overflows_the_summary_is_skipped(half):
    acc = ResidualAccumulator(["a"])
    if half:
        acc = acc.half()
    acc.update("a", torch.ones(3))
    before, count = acc.summary_tensor(), int(acc.step_counts[0])
    big = torch.tensor([1e7]) if half else torch.tensor([1e300], dtype=torch.float64)  # finite
    with pytest.warns(RuntimeWarning, match="overflows"):
        acc.update("a", big)
    assert torch.equal(acc.summary_tensor(), before) and int(acc.step_counts[0]) == count
    assert acc.nonfinite_updates == {"a": 1}
    acc.update("a", torch.ones(3))  # goes on
    assert bool(torch.isfinite(acc.summary).all()) and int(acc.step_counts[0]) == count + 1


def test_an_accumulator_built_in_inference_mode_updates_outside_it():
    with torch.inference_mode():
        acc = ResidualAccumulator(["a", "b"])
    ref = ResidualAccumulator(["a", "b"])
    for a in (acc, ref):
        a.update("b", torch.tensor([2.0, 4.0]))
    assert torch.equal(acc.summary_tensor(), ref.summary_tensor())
    assert acc.step_counts.tolist() == [0, 1]
    assert set(acc.state_dict()) == {"summary", "step_counts"}
