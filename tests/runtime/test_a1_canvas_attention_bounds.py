"""`CanvasAttention` at scale: an allocator failure while building its projections is a
`SizeLimitError` naming the weights and their size, and the cache of `active_regions` executors
keeps only the last `max_restricted` sets."""

from __future__ import annotations

import itertools

import pytest
import torch

from canvas_core.errors import CanvasError, SizeLimitError
from canvas_core.runtime.canvas_attention import CanvasAttention
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection

NAMES = [f"r{i}" for i in range(6)]
LAYOUT = CanvasLayout(T=1, d_model=8, spatial_shape=(12,),
                      regions={n: (0, 1, 2 * i, 2 * i + 2) for i, n in enumerate(NAMES)})
TOPO = CanvasTopology([Connection(a, b) for a in NAMES for b in NAMES])


def test_an_allocator_failure_in_the_projections_is_a_canvas_error(monkeypatch) -> None:
    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 12884901888 bytes.")

    monkeypatch.setattr(torch.nn, "Linear", no_memory)
    with pytest.raises(SizeLimitError, match=r"CanvasAttention qkv and out_proj projection weights: the machine "
                                             r"could not allocate a tensor of shape \(32, 8\)") as info:
        CanvasAttention(TOPO, LAYOUT, n_heads=2)
    assert isinstance(info.value, CanvasError) and "GiB" in str(info.value)


def test_other_errors_of_the_projections_pass_through(monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(torch.nn, "Linear", broken)
    with pytest.raises(RuntimeError, match="something else"):
        CanvasAttention(TOPO, LAYOUT, n_heads=2)


def test_the_active_regions_cache_is_bounded_and_least_recently_used() -> None:
    torch.manual_seed(0)
    layer = CanvasAttention(TOPO, LAYOUT, n_heads=2)
    layer.max_restricted = 4
    x = torch.randn(1, 12, 8)
    sets = [frozenset(c) for c in itertools.combinations(NAMES, 2)]  # 15 distinct sets
    outs = {s: layer(x, active_regions=s) for s in sets}
    assert len(layer._restricted) == 4
    assert list(layer._restricted) == sets[-4:]
    layer(x, active_regions=sets[-4])  # a hit moves it to the back: the next new set drops sets[-3]
    layer(x, active_regions=sets[0])
    assert list(layer._restricted) == [sets[-2], sets[-1], sets[-4], sets[0]]
    for s in sets:  # rebuilt after eviction: the same result
        torch.testing.assert_close(layer(x, active_regions=s), outs[s], rtol=0, atol=0)
    assert len(layer._restricted) == 4


def test_prepare_keeps_every_set_it_builds() -> None:
    layer = CanvasAttention(TOPO, LAYOUT, n_heads=2)
    sets = [frozenset(c) for c in itertools.combinations(NAMES, 3)]  # 20 sets
    layer.max_restricted = 8
    layer.prepare(*sets)
    assert len(layer._restricted) == 20 and set(layer._restricted) == set(sets)
