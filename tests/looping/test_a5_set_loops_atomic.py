"""``set_loops(model, n)`` and the schedulers' ``step`` are all or nothing: when a ``wrapper_class=``
wrapper's own ``set_loops`` raises for one block, the blocks set before it get back their count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import canvas_core as cc
from canvas_core.looping import loop_parts_of

from tests.looping._scope_setup import make_net

torch.set_num_threads(1)


class Picky(nn.Module):
    """A wrapper whose ``set_loops`` refuses more loops than its block allows (block 2: one)."""

    def __init__(self, block: nn.Module, idx: int, max_loops: int, dim: int) -> None:
        super().__init__()
        self.original = block
        self.idx = idx
        self.limit = 1 if idx == 2 else max_loops
        self.current_loops = 1
        self.asked = 0
        self.loop_emb = nn.Parameter(torch.zeros(max_loops, dim))

    def set_loops(self, n: int) -> None:
        self.asked = n  # a change made before the refusal: rolled back too
        if n > self.limit:
            raise ValueError(f"block {self.idx} runs at most {self.limit} loops")
        self.current_loops = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.original(x + self.loop_emb[0])


def _counts(m: nn.Module) -> list:
    return [(p.current_loops, p.asked) for p in loop_parts_of(m)]


def test_set_loops_rolls_back_when_a_wrapper_refuses():
    m = make_net()
    cc.graft_looped_blocks(m, max_loops=3, wrapper_class=Picky)
    before = _counts(m)
    with pytest.raises(ValueError, match="block 2 runs at most 1"):
        cc.set_loops(m, 3)
    assert _counts(m) == before  # blocks 0 and 1 were set first, and are back at 1
    assert cc.set_loops(m, 1) == 1 and [c for c, _ in _counts(m)] == [1, 1, 1, 1]


@pytest.mark.parametrize("make_sched", [
    lambda: cc.CurriculumScheduler(max_loops=3, total_steps=3),
    lambda: cc.RandomDepthScheduler(max_loops=3, min_loops=3, seed=0),
])
def test_scheduler_step_rolls_back_when_a_wrapper_refuses(make_sched):
    m = make_net()
    parts, _ = cc.graft_looped_blocks(m, max_loops=3, wrapper_class=Picky)
    sched = make_sched()
    for target in (m, parts):
        before = _counts(m)
        with pytest.raises(ValueError, match="block 2"):
            sched.step(target, 10)
        assert _counts(m) == before


def test_canvas_parts_keep_their_count_when_a_later_part_refuses():
    m = make_net()
    blocks, _ = cc.graft_looped_blocks(m, max_loops=3)
    cc.set_loops(m, 2)
    bad = Picky(nn.Identity(), 2, 3, 12)
    with pytest.raises(ValueError, match="block 2"):
        cc.CurriculumScheduler(max_loops=3, total_steps=3).step(list(blocks) + [bad], 10)
    assert [b.current_loops for b in blocks] == [2, 2, 2, 2]


class _Plain:
    """A looped part that is no module (the schedulers take any object with ``set_loops``)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.n = limit, 1

    def set_loops(self, n: int) -> None:
        if n > self.limit:
            raise ValueError(f"at most {self.limit} loops")
        self.n = n


def test_scheduler_rolls_back_plain_objects():
    parts = [_Plain(3), _Plain(3), _Plain(1)]
    with pytest.raises(ValueError, match="at most 1"):
        cc.CurriculumScheduler(max_loops=3, total_steps=3).step(parts, 10)
    assert [p.n for p in parts] == [1, 1, 1]
