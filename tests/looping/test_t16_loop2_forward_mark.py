"""A grafted model's forward hooks tell one forward from the next: ``loop_stats`` / ``loop_counts``
report the latest forward only (naming the blocks it did not run, refusing a span it did not run)
and a span refuses a forward that enters at a member, whatever the forward before it ran.

Before, the block wrappers guessed where a forward starts (a block running again or a lower-index
block running), which read a forward that stopped before block k followed by one starting after k
as one forward; and a span kept reporting (and expecting the member after) an older forward."""

from __future__ import annotations

import copy
import io
from typing import List

import pytest
import torch
import torch._dynamo.testing
import torch.utils.checkpoint
from torch import nn

import canvas_core as cc
from canvas_core.errors import BackboneError, CanvasTypeError
from tests.looping.test_t16_loop_fixes import Tiny

torch.set_num_threads(1)


class Ordered(Tiny):
    """Runs its blocks in the order given (a backbone may run them in any order)."""

    def forward(self, x: torch.Tensor, order: List[int] = (0, 1, 2, 3)) -> torch.Tensor:  # type: ignore[override]
        return self.features(x, order)

    def features(self, x: torch.Tensor, order: List[int] = (0, 1, 2, 3)) -> torch.Tensor:
        h = self.patch_embed(x)
        for i in order:
            h = self.blocks[i](h)
        return self.proj_out(h)


def _grafted(cls: type = Tiny, scope: object = "block") -> nn.Module:
    torch.manual_seed(0)
    m = cls()
    cc.graft_looped_blocks(m, max_loops=3, scope=scope, latent_channels=3)
    return m


def _stop_then_start_after(m: nn.Module, call=None) -> None:
    call = call or m
    with torch.no_grad():
        cc.set_loops(m, 3)
        call(torch.randn(4, 6, 3), last=2)  # blocks 0, 1: stops before block 2
        cc.set_loops(m, 1)
        call(torch.randn(2, 6, 3), first=3)  # block 3 only: starts after block 2


def test_t16_loop2_forward_stopping_early_then_one_starting_late_are_two_forwards() -> None:
    m = _grafted()
    _stop_then_start_after(m)
    st = cc.loop_stats(m)
    assert st["blocks_not_run"] == [0, 1, 2]
    assert len(st["per_block"]) == 1 and st["loops"] == 1 and st["active"] == [2]
    assert cc.loop_counts(m).tolist() == [1, 1]


def test_t16_loop2_blocks_run_out_of_index_order_are_one_forward() -> None:
    m = _grafted(Ordered)
    with torch.no_grad():
        m(torch.randn(2, 6, 3), order=[2, 3, 0, 1])
    st = cc.loop_stats(m)
    assert st["blocks_not_run"] == [] and len(st["per_block"]) == 4


def test_t16_loop2_blocks_run_without_the_model_fall_back_to_block_order() -> None:
    m = _grafted()
    with torch.no_grad():
        m(torch.randn(4, 6, 3))
        h = torch.randn(2, 6, 16)
        for i in (2, 3):  # no hook runs: a lower index than the last block's starts a forward
            h = m.blocks[i](h)
    assert cc.loop_stats(m)["blocks_not_run"] == [0, 1] and cc.loop_counts(m).tolist() == [3, 3]
    with torch.no_grad():
        m.blocks[0](h)
        m.blocks[0](h[:1])  # block 0 again: a new forward
    assert cc.loop_stats(m)["blocks_not_run"] == [1, 2, 3] and cc.loop_counts(m).tolist() == [3]


@pytest.mark.parametrize("scope", [(0, 2), "stack"])
def test_t16_loop2_span_the_last_forward_did_not_run_is_not_reported(scope: object) -> None:
    m = _grafted(scope=scope)
    with torch.no_grad():
        m(torch.randn(4, 6, 3))
        m(torch.randn(2, 6, 3), first=4 if scope == "stack" else 2)  # after the span: it does not run
    for fn in (cc.loop_stats, cc.loop_counts):
        with pytest.raises(CanvasTypeError, match=r"last forward of Tiny ran no iteration of its looped span"):
            fn(m)
    with torch.no_grad():
        m(torch.randn(3, 6, 3))
    assert cc.loop_counts(m).tolist() == [3, 3, 3] and cc.loop_stats(m)["active"] == [3, 3, 3]


def test_t16_loop2_no_looped_block_in_the_last_forward_is_refused() -> None:
    m = _grafted()
    with torch.no_grad():
        m(torch.randn(4, 6, 3))
        m(torch.randn(2, 6, 3), last=0)
    with pytest.raises(CanvasTypeError, match=r"last forward of Tiny ran none of its looped blocks"):
        cc.loop_stats(m)


def test_t16_loop2_span_entered_at_member_after_a_forward_stopping_in_the_span_is_refused() -> None:
    m = _grafted(scope=(1, 3))
    x = torch.randn(2, 6, 3)
    with torch.no_grad():
        m(x, last=2)  # stops right after the span's first block: the span expects block 2 next
        with pytest.raises(BackboneError, match=r"block 2 .*span \(1, 3\)"):
            m(x, first=2)
        m(x, last=2)
        m(x, first=3)  # after the span: fine


def test_t16_loop2_ungraft_removes_the_forward_hooks() -> None:
    from canvas_core.looping.ungraft import FORWARD_MARK, ForwardEnd, ForwardStart

    m = _grafted(scope=(1, 3))
    hooks = (m._forward_pre_hooks, m._forward_hooks)
    assert [type(h) for d in hooks for h in d.values()] == [ForwardStart, ForwardEnd]
    assert not m.patch_embed._forward_pre_hooks  # only the model's call starts a forward
    cc.ungraft_looped_blocks(m)
    assert not m._forward_pre_hooks and not m._forward_hooks and not m._forward_hooks_always_called
    assert FORWARD_MARK not in m.__dict__
    cc.graft_looped_blocks(m, max_loops=2, latent_channels=3)
    _stop_then_start_after(m)
    assert cc.loop_stats(m)["blocks_not_run"] == [0, 1, 2]
    assert len(m._forward_pre_hooks) == 1


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_t16_loop2_copies_keep_their_own_forward_marks(how: str) -> None:
    m = _grafted()
    with torch.no_grad():
        m(torch.randn(4, 6, 3))
    if how == "deepcopy":
        c = copy.deepcopy(m)
    else:
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        c = torch.load(buf, weights_only=False)
    _stop_then_start_after(c)
    assert cc.loop_stats(c)["blocks_not_run"] == [0, 1, 2]
    assert cc.loop_stats(m)["blocks_not_run"] == [] and cc.loop_counts(m).tolist() == [3] * 4
    mark, parts = c.__dict__["_canvas_forward_mark"]
    assert all(p.__dict__["_forward_mark"] is mark for p in parts)
    assert {id(p) for p in parts} == {id(p) for p in cc.looping.scopes.loop_parts_of(c)}


@pytest.fixture
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("_fresh_dynamo")
def test_t16_loop2_compiled_forward_reports_its_own_blocks_without_recompiling() -> None:
    m = _grafted()
    cnt = torch._dynamo.testing.CompileCounter()
    cm = torch.compile(m, backend=cnt, fullgraph=True, dynamic=True)
    with torch.no_grad():
        for b in (2, 3, 4):
            cm(torch.randn(b, 6, 3))
            assert cc.loop_stats(cm)["blocks_not_run"] == []
        assert cnt.frame_count == 1  # the forward hook adds no recompile per call
        for b in (2, 3, 4):
            cm(torch.randn(b, 6, 3), last=2)
            assert cc.loop_stats(cm)["blocks_not_run"] == [2, 3]
            assert cc.loop_counts(cm).tolist() == [3] * b
    assert cnt.frame_count == 2


@pytest.mark.usefixtures("_fresh_dynamo")
def test_t16_loop2_compiled_span_the_last_forward_did_not_run_is_not_reported() -> None:
    m = _grafted(scope=(1, 3))
    cm = torch.compile(m, backend="eager", fullgraph=True)
    with torch.no_grad():
        cm(torch.randn(2, 6, 3))
        cm(torch.randn(2, 6, 3), last=1)
    with pytest.raises(CanvasTypeError, match=r"ran no iteration of its looped span \(1, 3\)"):
        cc.loop_stats(cm)


class Checkpointed(Tiny):
    """Runs each block under the backbone's own reentrant checkpointing (recomputed in backward)."""

    def forward(self, x: torch.Tensor, first: int = 0, last: int = 99) -> torch.Tensor:
        h = self.patch_embed(x)
        for b in self.blocks[first:last]:
            h = torch.utils.checkpoint.checkpoint(b, h, use_reentrant=True)
        return self.proj_out(h)


def test_t16_loop2_recompute_in_backward_keeps_the_forwards_records() -> None:
    torch.manual_seed(0)
    m = Checkpointed().train()
    cc.graft_looped_blocks(m, max_loops=2, latent_channels=3, freeze="none")
    m(torch.randn(2, 6, 3, requires_grad=True)).sum().backward()  # blocks 3, 2, 1, 0 run again
    st = cc.loop_stats(m)
    assert st["blocks_not_run"] == [] and len(st["per_block"]) == 4
