"""The layout check a compiled canvas runs reads O(1) values: Dynamo guards the same number of
layout values whatever the number of regions (it guarded every region before, so a compiled call
cost O(regions) and a compiled ``create_empty`` O(regions^2)), and ``create_empty`` checks the
layout once, not once per region. A change is still refused on the next compiled call."""

from __future__ import annotations

import pickle

import pytest
import torch

import canvas_core.runtime.canvas as canvas_module
from canvas_core import CanvasLayout, RegionSpec, SpatiotemporalCanvas
from canvas_core.errors import SchemaError


def _canvas(n: int) -> SpatiotemporalCanvas:
    torch.manual_seed(0)
    regions = {f"r{i}": (i, i + 1, 0, 2) for i in range(n)}
    return SpatiotemporalCanvas(CanvasLayout(T=n, d_model=4, spatial_shape=(2,), regions=regions))


def _layout_guards(n: int, pickled: bool = False) -> int:
    torch._dynamo.reset()
    sc = _canvas(n)
    if pickled:  # a layout loaded from a pickle links what the traced check reads when a canvas is built
        sc = SpatiotemporalCanvas(pickle.loads(pickle.dumps(sc.layout)))
    seen = []

    def keep_all(entries):
        seen.extend(e for e in entries if any(w in e.name for w in ("layout", "_built_from", "regions")))
        return [True] * len(entries)

    extract = torch.compile(lambda x: sc.extract(x, "r0"), backend="eager", options={"guard_filter_fn": keep_all})
    extract(torch.zeros(1, 2 * n, 4))
    return len(seen)


@pytest.mark.parametrize("pickled", [False, True])
def test_guards_on_the_layout_do_not_grow_with_the_regions(pickled):
    assert _layout_guards(3, pickled) == _layout_guards(12, pickled)


def test_a_pickled_layout_changed_after_compiling_is_refused():
    torch._dynamo.reset()
    sc = _canvas(3)
    sc = SpatiotemporalCanvas(pickle.loads(pickle.dumps(sc.layout)))
    extract = torch.compile(lambda x: sc.extract(x, "r0"), backend="eager")
    x = sc.create_empty(1)
    extract(x)
    sc.layout.regions["r2"] = RegionSpec((2, 3, 0, 1))
    with pytest.raises(SchemaError, match="before it was changed"):
        extract(x)


def test_create_empty_checks_the_layout_once(monkeypatch):
    sc = _canvas(6)
    calls = []
    real = canvas_module.check_unchanged
    monkeypatch.setattr(canvas_module, "check_unchanged", lambda *a: calls.append(1) or real(*a))
    sc.create_empty(1)
    assert len(calls) == 1


def test_a_change_after_compiling_is_still_refused_and_a_change_undone_accepted():
    torch._dynamo.reset()
    sc = _canvas(4)
    extract = torch.compile(lambda x: sc.extract(x, "r1"), backend="eager")
    x = sc.create_empty(1)
    first = extract(x)
    sc.layout.regions["r3"] = RegionSpec((3, 4, 0, 1))
    with pytest.raises(SchemaError, match="before it was changed"):
        extract(x)
    sc.layout.regions["r3"] = RegionSpec((3, 4, 0, 2))  # back to what the canvas was built from
    assert torch.equal(extract(x), first)


def test_a_region_replaced_behind_the_dict_is_refused_by_compiled_create_empty():
    torch._dynamo.reset()
    sc = _canvas(3)
    compiled = torch.compile(sc.create_empty, backend="eager")
    compiled(1)
    dict.__setitem__(sc.layout.regions, "r2", RegionSpec((2, 3, 0, 2), period=2))  # the last region
    with pytest.raises(SchemaError, match="before it was changed"):
        compiled(1)
