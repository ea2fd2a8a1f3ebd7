"""LearnedScheduler on non-finite summaries: refused naming the entries, as RegionScheduler refuses
them (before: NaN scores, and an arbitrary set of regions picked by topk)."""

from __future__ import annotations

import pytest
import torch

from canvas_core.errors import CanvasError, ProgramError
from canvas_core.runtime.scheduling import LearnedScheduler


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("training", [False, True])
def test_non_finite_summaries_are_refused_naming_the_entry(bad, training):
    torch.manual_seed(0)
    sched = LearnedScheduler(4, 3, 2).train(training)
    summaries = torch.tensor([0.5, bad, 0.1])
    with pytest.raises(ProgramError, match=r"NaN or infinity \(at index \[1\]\)") as info:
        sched(summaries)
    assert isinstance(info.value, CanvasError)
    with pytest.raises(ProgramError):
        sched.select(summaries[None].expand(2, -1), ["a", "b", "c", "d"])


def test_finite_summaries_pick_the_top_regions():
    torch.manual_seed(0)
    sched = LearnedScheduler(4, 3, 2).eval()
    summaries = torch.tensor([0.5, -1.0, 0.1])
    active, log_probs = sched(summaries)
    assert active == set(log_probs.topk(2).indices.tolist())
    assert sched.select(summaries, ["a", "b", "c", "d"]) == {"abcd"[i] for i in active}
