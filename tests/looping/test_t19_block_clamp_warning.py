"""set_loops on a block-scope graft warns when the count is clamped to max_loops (a test-time depth
sweep past it would otherwise measure the same depth again without a word)."""

from __future__ import annotations

import warnings

import pytest

import canvas_core as cc
import canvas_core.looping as looping
from canvas_core.looping import loop_parts_of
from tests.looping._scope_setup import make_net


def _grafted(scope="block", max_loops=3):
    net = make_net()
    cc.graft_looped_blocks(net, max_loops=max_loops, scope=scope)
    return net


def test_block_scope_clamp_warns_once_naming_max_loops_and_the_fix():
    net = _grafted()
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        assert cc.set_loops(net, 8) == 8
    clamped = [w for w in got if "max_loops" in str(w.message)]
    assert len(clamped) == 1  # one per call, not one per block
    assert issubclass(clamped[0].category, looping.LoopsClampedWarning)
    assert issubclass(looping.LoopsClampedWarning, UserWarning)
    text = str(clamped[0].message)
    assert "max_loops=3" in text and "max_loops=8" in text and "scope=" in text
    assert clamped[0].filename == __file__  # points at the caller
    assert {p.current_loops for p in loop_parts_of(net)} == {3}  # the documented clamp is kept


@pytest.mark.parametrize("n", [1, 3])
def test_no_warning_within_max_loops(n):
    net = _grafted()
    with warnings.catch_warnings():
        warnings.simplefilter("error", looping.LoopsClampedWarning)
        cc.set_loops(net, n)


@pytest.mark.parametrize("scope", ["stack", "model"])
def test_span_and_model_scopes_run_the_count_without_warning(scope):
    net = _grafted(scope)
    with warnings.catch_warnings():
        warnings.simplefilter("error", looping.LoopsClampedWarning)
        cc.set_loops(net, 8)
