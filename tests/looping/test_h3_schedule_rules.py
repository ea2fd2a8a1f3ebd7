"""The schedulers set loop counts by the rule of ``set_loops``: a ``wrapper_class=`` wrapper gets
the count and applies its own rule, a block list after a span graft is accepted (its members are
not parts), an empty list of blocks sets nothing and returns the scheduled count (as canvas-engineering), and ``warmup_fraction``
takes numpy scalars as ``max_loops`` does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import canvas_core as cc
from canvas_core.errors import CanvasError, CanvasTypeError, SchemaError
from canvas_core.looping.schedules import CurriculumScheduler, RandomDepthScheduler

from tests.looping._scope_setup import make_net

torch.set_num_threads(1)


class Extrapolating(nn.Module):
    """A wrapper_class= wrapper whose own rule runs any count (reusing its last embedding)."""

    def __init__(self, block, idx, max_loops, dim):
        super().__init__()
        self.original = block
        self.max_loops = max_loops
        self.current_loops = max_loops
        self.loop_emb = nn.Parameter(torch.zeros(max_loops, dim))

    def set_loops(self, n):
        self.current_loops = n

    def forward(self, x):
        for i in range(self.current_loops):
            x = self.original(x + self.loop_emb[min(i, self.max_loops - 1)])
        return x


def test_schedulers_apply_the_wrappers_own_rule_as_set_loops_does():
    m = make_net()
    parts, _ = cc.graft_looped_blocks(m, max_loops=2, wrapper_class=Extrapolating)
    assert cc.set_loops(m, 5) == 5 and [p.current_loops for p in parts] == [5] * 4
    depth = RandomDepthScheduler(max_loops=5, min_loops=5)
    assert depth.step(m, 0) == 5 and [p.current_loops for p in parts] == [5] * 4
    assert depth.step(parts, 1) == 5 and [p.current_loops for p in parts] == [5] * 4
    assert CurriculumScheduler(max_loops=4, total_steps=4).step(m, 3) == 4
    assert [p.current_loops for p in parts] == [4] * 4


def test_canvas_core_block_wrappers_still_clamp():
    m = make_net()
    parts, _ = cc.graft_looped_blocks(m, max_loops=2)
    assert RandomDepthScheduler(max_loops=5, min_loops=5).step(m, 0) == 2
    assert [p.current_loops for p in parts] == [2] * 4 and cc.set_loops(m, 5) == 5
    assert [p.current_loops for p in parts] == [2] * 4


@pytest.mark.parametrize("sched", [CurriculumScheduler(max_loops=3, total_steps=3),
                                   RandomDepthScheduler(max_loops=3, min_loops=3)])
def test_empty_block_list_returns_the_scheduled_count_and_a_module_without_loops_is_refused(sched):
    assert sched.step([], 2) == 3  # as canvas-engineering: nothing to set, the count is returned
    with pytest.raises(CanvasTypeError, match="ModuleList has no looped part"):
        sched.step(nn.ModuleList(), 2)


def test_block_list_of_a_span_graft_is_accepted():
    m = make_net()
    (span,), _ = cc.graft_looped_blocks(m, max_loops=2, scope=(1, 3))
    assert CurriculumScheduler(max_loops=4, total_steps=4).step(m.blocks, 3) == 4
    assert span.current_loops == 4
    with pytest.raises(CanvasError, match="no looped part"):
        CurriculumScheduler(max_loops=3, total_steps=3).step(make_net(), 1)


@pytest.mark.parametrize("w", [np.float32(0.25), np.float16(0.25), np.int64(0)])
def test_warmup_fraction_takes_numpy_scalars(w):
    c = CurriculumScheduler(max_loops=3, total_steps=100, warmup_fraction=w)
    assert type(c.warmup_fraction) is float and c.warmup_fraction == float(w)
    assert c.get_loops(24) == 1


@pytest.mark.parametrize("w", [10 ** 400, np.float32("nan"), 1.0, -0.5, True, "0.1"])
def test_bad_warmup_fraction_is_refused(w):
    with pytest.raises(SchemaError, match=r"warmup_fraction must be in \[0, 1\)"):
        CurriculumScheduler(max_loops=3, total_steps=100, warmup_fraction=w)
