"""``CanvasSharding`` refuses bad arguments with a SequenceParallelError naming them (before: a
TypeError / IndexError / AttributeError leaked, and a negative rank or tolerance silently gave an
empty share or an odd cut); no process group needed."""

from __future__ import annotations

import pytest
import torch

from canvas_core import AttentionDispatcher
from canvas_core.runtime.sharding import CanvasSharding, SequenceParallelError
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection

LAYOUT = CanvasLayout(T=2, spatial_shape=(2, 4), d_model=16, regions={"v": (0, 2, 0, 2, 0, 3), "a": (0, 2, 0, 2, 3, 4)})
TOPO = CanvasTopology(connections=[Connection("v", "v"), Connection("a", "v"), Connection("v", "a")])

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def layer():
    torch.manual_seed(0)
    return AttentionDispatcher(TOPO, LAYOUT, 16, 4)


@pytest.mark.parametrize("rank", [2, -1, "0", 1.0, True])
def test_positions_of_a_rank_outside_the_group_is_refused(layer, rank):
    sharding = CanvasSharding.of(layer, 2)
    with pytest.raises(SequenceParallelError, match=r"rank must be an integer in \[0, 2\)"):
        sharding.positions(rank)
    assert len(sharding.positions(0)) + len(sharding.positions(1)) == LAYOUT.num_positions


@pytest.mark.parametrize("tolerance", ["x", float("nan"), -0.5, float("inf"), None])
def test_a_bad_tolerance_is_refused(layer, tolerance):
    with pytest.raises(SequenceParallelError, match="tolerance must be a finite number >= 0"):
        CanvasSharding.of(layer, 2, tolerance=tolerance)


@pytest.mark.parametrize("call, words", [
    (lambda s, a: s.work(a.plan, n_heads=0), "n_heads must be an integer >= 1, got 0"),
    (lambda s, a: s.work(a.plan, n_heads="4"), "n_heads must be an integer >= 1, got '4'"),
    (lambda s, a: s.summary(a, batch="x"), "batch must be an integer >= 1, got 'x'"),
    (lambda s, a: s.communication(a, element_bytes=0), "element_bytes must be an integer >= 1, got 0"),
    (lambda s, a: s.communication(a.plan, d_model="x"), "d_model must be an integer >= 1, got 'x'"),
    (lambda s, a: s.matches(None), "expected an ExecutionPlan, a canvas attention layer or a CanvasLayout"),
])
def test_bad_arguments_of_the_reports_are_refused(layer, call, words):
    sharding = CanvasSharding.of(layer, 2)
    with pytest.raises(SequenceParallelError) as err:
        call(sharding, layer)
    assert words in str(err.value)
    assert sharding.matches(layer) and sharding.matches(layer.plan)
