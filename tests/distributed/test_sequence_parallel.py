"""Sequence parallelism (canvas_core/runtime/sequence_parallel.py, sharding.py).

Multi-process: groups of 2 and 4 gloo CPU processes run ``sp_worker.py``'s scenarios, each
comparing the sequence-parallel forward and gradients with the one-process layer on random
layouts and topologies (reference kernel in every mode, five non-softmax types), a parallelized
two-block model on a (dp, sp) mesh, and the bad settings.  In-process: the cut itself and the
errors raised when torch.distributed is not initialised.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import canvas_ref_strategies as strategies  # registered by tests/conftest.py
from canvas_core import AttentionDispatcher, CanvasLayout, CanvasTopology, Connection
from canvas_core.compiler.lowering import lower
from canvas_core.runtime.sequence_parallel import (
    CanvasSharding,
    SequenceParallelCanvasAttention,
    SequenceParallelError,
    parallelize_canvas,
    sequence_parallel_mesh,
    shard_canvas,
    unshard_canvas,
)

_spec = importlib.util.spec_from_file_location("canvas_sp_launch", Path(__file__).with_name("_launch.py"))
_launch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_launch)

SCENARIOS = ("errors", "mismatch", "fixed", "model", "random")


@pytest.mark.parametrize("world,scenarios,examples", [(2, SCENARIOS, 12), (4, ("errors", "mismatch", "model", "random"), 8)])
def test_sequence_parallel_equals_one_process(world, scenarios, examples):
    out = _launch.launch(world, *scenarios, "--examples", str(examples))
    for name in scenarios:
        assert f"OK {name} world={world}" in out, out


# --- the cut (no process group needed) -----------------------------------------------------------
def _region_frame_bounds(plan):
    cuts = {0, plan.n, plan.n_covered}
    for frames in plan.region_blocks.values():
        for runs in frames.values():
            for a, b in runs:
                cuts.update((a, b))
    return cuts


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_cut_covers_the_canvas_once_in_balanced_contiguous_shares(data):
    layout = data.draw(strategies.layouts(max_T=6, max_side=4, max_regions=4))
    topo = data.draw(strategies.topologies(layout, fns=("cross_attention", "linear_attention")))
    plan = lower(topo, layout)
    size = data.draw(st.integers(1, 6))
    if plan.n < size:
        with pytest.raises(SequenceParallelError, match="too small"):
            CanvasSharding.of(plan, size)
        return
    sh = CanvasSharding.of(plan, size)
    assert sh.bounds[0] == 0 and sh.bounds[-1] == plan.n and all(s >= 1 for s in sh.sizes)
    share = plan.n / size
    assert all(abs(s - share) <= 0.1 * share + 1 for s in sh.sizes), (sh.sizes, share)
    allpos = np.concatenate([sh.positions(r) for r in range(size)])
    assert sorted(allpos.tolist()) == list(range(plan.n))
    assert sh.whole_frames == all(b in _region_frame_bounds(plan) for b in sh.bounds)
    # work: every linked pair belongs to the rank holding its query; the softmax pairs split by heads
    work = sh.work(plan, n_heads=size * 2)
    # (pairs of each type counted once per type, as each type computes them)
    dense = sum(plan.to_dense(canonical=False, fn=f, dtype=torch.float64).numpy() > 0 for f in plan.groups)
    total = int(np.sum(dense))
    assert sum(w["query_pairs"] for w in work) == total
    for w in work:
        lo, hi = w["packed"]
        assert w["query_pairs"] == int(np.sum(dense[lo:hi]))
    soft = plan.to_dense(canonical=False, fn="cross_attention").numpy() > 0 if "cross_attention" in plan.groups else np.zeros(1)
    assert [w["pairs"] for w in work] == [soft.sum() / size] * size


def test_cut_prefers_region_frame_boundaries():
    # packed: frames of "a" at [0, 10), [10, 20), [20, 30), of "b" at [30, 32), ... (N = 36).
    # Halves: the ideal cut 18 is 2 positions from the frame boundary 20; that is more than the
    # default tolerance (5% of a share, 0.9) allows, so the cut is exact; a 15% tolerance takes 20
    layout = CanvasLayout(T=3, H=1, W=12, d_model=4, regions={"a": (0, 3, 0, 1, 0, 10), "b": (0, 3, 0, 1, 10, 12)})
    plan = lower(CanvasTopology(connections=[Connection("a", "b")]), layout)
    sh = CanvasSharding.of(plan, 2)
    assert sh.bounds == (0, 18, 36) and not sh.whole_frames
    assert CanvasSharding.of(plan, 2, tolerance=0.15).bounds == (0, 20, 36)
    layout = CanvasLayout(T=4, H=2, W=4, d_model=4, regions={"v": (0, 4, 0, 2, 0, 4)})
    sh = CanvasSharding.of(layout, 4)  # a layout is cut by its packing
    assert sh.bounds == (0, 8, 16, 24, 32) and sh.whole_frames


def test_communication_formula():
    layout = CanvasLayout(T=4, H=2, W=4, d_model=16, regions={"v": (0, 4, 0, 2, 0, 4)})
    attn = AttentionDispatcher(CanvasTopology.causal_temporal(["v"]), layout, 16, 4)
    sh = CanvasSharding.of(attn, 2)
    (c0, c1) = sh.communication(attn, batch=3, element_bytes=2)
    # q/k/v of 16 positions x 2 foreign heads of width 4, x3; out: 16 foreign positions x 2 heads x 4
    assert c0["qkv"] == 3 * 16 * 3 * 4 * 2 * 2 and c0["out"] == 3 * 16 * 2 * 4 * 2 and c0["gather"] == 0
    assert c0 == {**c1, "rank": 0}
    lines = sh.summary(attn, batch=3, element_bytes=2).splitlines()
    assert "cuts [0, 16, 32]" in lines[0] and len(lines) == 4
    assert lines[2].split()[:3] == ["0", "16", "2"]  # rank, positions, heads


# --- bad settings without a process group --------------------------------------------------------
@pytest.fixture
def no_process_group(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)


def test_every_entry_point_refuses_an_uninitialised_process_group(no_process_group):
    layout = CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"v": (0, 2, 0, 2, 0, 2)})
    attn = AttentionDispatcher(CanvasTopology.causal_temporal(["v"]), layout, 8, 2)
    x = torch.zeros(1, 8, 8)
    calls = [lambda: SequenceParallelCanvasAttention(attn), lambda: shard_canvas(x, attn),
             lambda: unshard_canvas(x, attn), lambda: sequence_parallel_mesh(2),
             lambda: parallelize_canvas(torch.nn.Sequential(attn))]
    for call in calls:
        with pytest.raises(SequenceParallelError, match="init_process_group"):
            call()
    assert isinstance(attn, AttentionDispatcher)  # nothing was wrapped


def test_bad_sizes_are_refused_before_any_group_is_needed():
    layout = CanvasLayout(T=1, H=1, W=3, d_model=4, regions={"v": (0, 1, 0, 1, 0, 3)})
    for bad in (0, -1, 1.5, True):
        with pytest.raises(SequenceParallelError, match="positive integer"):
            CanvasSharding.of(layout, bad)
    with pytest.raises(SequenceParallelError, match="too small to split.*size <= 3"):
        CanvasSharding.of(layout, 4)
    with pytest.raises(SequenceParallelError, match="ExecutionPlan"):
        CanvasSharding.of("not a plan", 2)


def test_parallelize_canvas_on_a_lone_layer_points_to_the_wrapper():
    layout = CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"v": (0, 2, 0, 2, 0, 2)})
    attn = AttentionDispatcher(CanvasTopology.causal_temporal(["v"]), layout, 8, 2)
    with pytest.raises(SequenceParallelError, match="is one itself.*SequenceParallelCanvasAttention"):
        parallelize_canvas(attn)
    with pytest.raises(SequenceParallelError, match="contains no CanvasAttention") as err:
        parallelize_canvas(torch.nn.Linear(2, 2))
    assert "is one itself" not in str(err.value)
