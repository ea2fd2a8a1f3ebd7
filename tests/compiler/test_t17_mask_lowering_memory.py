"""Lowering refuses, before building anything, a connection whose tile or sparse mask would make
it allocate more than ``CANVAS_MAX_BYTES``; moderate masks still lower to the reference plan."""

import tracemalloc

import numpy as np
import pytest
import torch

import canvas_core.compiler.lowering as lowering
from canvas_core import MaskSpec
from canvas_core.compiler.lowering import lower
from canvas_core.compiler.mask_cost import mask_cost
from canvas_core.errors import CanvasError, SizeLimitError
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection
import canvas_ref_dense_reference as ref  # registered by tests/conftest.py


def _one_region(T, side):
    return CanvasLayout(T=T, d_model=8, spatial_shape=(side, side), regions={"a": (0, T, 0, side, 0, side)})


def _checkerboard(n):
    return (np.add.outer(np.arange(n), np.arange(n)) % 2).astype(int)


@pytest.fixture
def no_index_lists(monkeypatch):
    """Fail the test if lowering starts listing mask indices (the refusal must come first)."""
    def started(*args, **kwargs):
        raise AssertionError("lowering started building the mask's index lists")
    monkeypatch.setattr(lowering, "mask_index_arrays", started)


def _refused(topology, layout):
    tracemalloc.start()
    try:
        with pytest.raises(SizeLimitError) as info:
            lower(topology, layout)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(info.value, CanvasError)
    assert peak < 32 << 20, f"{peak:,} bytes allocated before the refusal"
    return str(info.value)


@pytest.mark.parametrize("mask, side", [
    (MaskSpec(kind="tile", tile_h=1, tile_w=1), 32),  # 1024 one-cell tiles x 256 x 256 frame pairs
    (MaskSpec(kind="sparse", pattern=_checkerboard(64)), 8),  # 2048 one-cell blocks x the same
])
def test_hostile_mask_is_refused_before_lowering(no_index_lists, mask, side):
    layout = _one_region(256, side)
    msg = _refused(CanvasTopology(connections=[Connection(src="a", dst="a", mask=mask)]), layout)
    assert "connection #0 'a' -> 'a'" in msg and f"{mask.kind!r} mask" in msg
    assert "rectangles" in msg and "CANVAS_MAX_BYTES" in msg and "coarser mask" in msg


def test_moderate_mask_refused_under_a_lower_byte_limit(no_index_lists, monkeypatch):
    """About 0.1 GB at its peak (measured; ~0.5 GB before lowering was vectorised): within the
    default 8 GiB, refused under a 64 MiB limit."""
    layout = _one_region(64, 16)
    topology = CanvasTopology(connections=[
        Connection(src="a", dst="a"),
        Connection(src="a", dst="a", mask=MaskSpec(kind="tile", tile_h=1, tile_w=1), weight=0.5)])
    monkeypatch.setenv("CANVAS_MAX_BYTES", str(64 << 20))
    msg = _refused(topology, layout)
    assert "connection #1 'a' -> 'a'" in msg and "64.0 MiB" in msg


def test_tile_mask_to_disjoint_region_counts_its_index_lists(no_index_lists, monkeypatch):
    """Every one-cell tile of 'a' links all of 'b' (no shared position): few rectangles, but
    |tiles| x |b| listed indices, which the estimate counts."""
    layout = CanvasLayout(T=4, d_model=8, spatial_shape=(32, 64),
                          regions={"a": (0, 4, 0, 32, 0, 32), "b": (0, 4, 0, 32, 32, 64)})
    conn = Connection(src="a", dst="b", mask=MaskSpec(kind="tile", tile_h=1, tile_w=1), t_src=0, t_dst=0)
    assert mask_cost(conn, layout, "c").indices >= 1024 * 1024 * 4
    monkeypatch.setenv("CANVAS_MAX_BYTES", str(64 << 20))
    assert "'tile' mask" in _refused(CanvasTopology(connections=[conn]), layout)


def _moderate():
    layout = CanvasLayout(T=8, d_model=8, spatial_shape=(6, 9),
                          regions={"past": (0, 4, 0, 6, 0, 6), "now": (4, 8, 0, 6, 0, 6),
                                   "side": (0, 8, 0, 2, 6, 9)})
    blocks = np.kron(np.eye(3, dtype=int), np.ones((12, 12), dtype=int))
    return layout, CanvasTopology(connections=[
        Connection(src="now", dst="past", mask=MaskSpec(kind="tile", tile_h=2, tile_w=3)),
        Connection(src="past", dst="now", mask=MaskSpec(kind="sparse", pattern=blocks), weight=0.5),
        Connection(src="now", dst="now", mask=MaskSpec(kind="tile", tile_shape=(3, 2)), t_src=0, t_dst=-1),
        Connection(src="side", dst="past", mask=MaskSpec(kind="sparse", pattern=_checkerboard(36)[:6])),
        Connection(src="side", dst="side"),
    ])


def test_moderate_masks_lower_to_the_reference_plan():
    layout, topology = _moderate()
    plan = lower(topology, layout)
    want = ref.reference_mask(topology, layout).float()
    assert torch.equal(plan.to_dense().float(), want)
    for i, conn in enumerate(topology.connections[:4]):
        made = sum(int((g.conn == i).sum()) for g in plan.groups.values())
        bound = mask_cost(conn, layout, f"#{i}").rects
        assert made <= bound, (i, made, bound)
        if i in (0, 3):  # all frames x all frames: exact for tiles and one-cell blocks
            assert bound == made, (i, made, bound)
        elif i == 2:  # offsets: the link count is a bound (frame 4 has no frame before it in 'now')
            assert bound <= 2 * made, (i, made, bound)


def test_blocky_pattern_is_counted_exactly_before_it_is_refused(monkeypatch):
    """A pattern of a few large blocks has many 'corners' (the cheap bound) but a cover of three
    rectangles: under a limit between the two, lowering goes ahead."""
    layout, topology = _moderate()
    conn = topology.connections[1]
    topology = CanvasTopology(connections=[conn])
    want = lower(topology, layout)
    cheap = mask_cost(conn, layout, "c")
    monkeypatch.setenv("CANVAS_MAX_BYTES", str(cheap.kept_bytes))  # the cheap bound alone is over
    assert mask_cost(conn, layout, "c", exact=True).rects == 3 * 4 * 4 < cheap.rects
    got = lower(topology, layout)
    for fn, g in want.groups.items():
        h = got.groups[fn]
        assert all(np.array_equal(getattr(g, k), getattr(h, k)) for k in ("q0", "q1", "k0", "k1", "weight", "conn"))


def test_large_dense_topology_is_not_refused():
    """Only the masks are new in the estimate: 2**16 frames of dense connections still pass."""
    T = 1 << 16
    layout = CanvasLayout(T=T, d_model=8, spatial_shape=(4, 4),
                          regions={"a": (0, T, 0, 4, 0, 2), "b": (0, T, 0, 4, 2, 4)})
    topology = CanvasTopology(connections=[Connection(src="a", dst="b"), Connection(src="b", dst="a", t_src=0, t_dst=-1),
                                           Connection(src="a", dst="a", mask=MaskSpec())])
    lowering._check_frame_work(topology, layout)  # the estimate alone: no lowering of 2**16 frames here
