"""A canvas run under torch.compile checks its layout as the eager one does: a region changed
after the canvas was built (its period here, so the identity it adds changes) is refused on the
next call instead of retracing with the new identity over the indices of the old layout.
``region_identity`` / ``region_embedding`` called on their own check it too."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from canvas_core import CanvasLayout, RegionSpec, SpatiotemporalCanvas
from canvas_core.errors import SchemaError


def _canvas() -> SpatiotemporalCanvas:
    torch.manual_seed(0)
    layout = CanvasLayout(T=2, d_model=4, spatial_shape=(4,), regions={"a": (0, 2, 0, 2), "b": (0, 2, 2, 4)})
    return SpatiotemporalCanvas(layout)


@pytest.mark.parametrize("change", [
    lambda lay: lay.regions.__setitem__("a", RegionSpec((0, 2, 0, 2), period=2)),
    lambda lay: lay.regions.__setitem__("a", RegionSpec((0, 2, 0, 1))),
    lambda lay: dict.__setitem__(lay.regions, "a", RegionSpec((0, 2, 1, 2))),  # behind the dict's back
    lambda lay: setattr(lay, "T", 3),
], ids=["period", "bounds", "dict-setitem", "T"])
def test_a_compiled_create_empty_refuses_a_changed_layout(change):
    torch._dynamo.reset()
    sc = _canvas()
    compiled = torch.compile(sc.create_empty, backend="eager")
    compiled(1)
    change(sc.layout)
    with pytest.raises(SchemaError, match="built from this CanvasLayout before it was changed"):
        compiled(1)


def test_compiled_place_and_extract_refuse_it_too():
    torch._dynamo.reset()
    sc = _canvas()
    x = sc.create_empty(1)
    place = torch.compile(sc.place, backend="eager")
    extract = torch.compile(sc.extract, backend="eager")
    place(x, torch.zeros(1, 4, 4), "a")
    extract(x, "b")
    sc.layout.regions["a"] = RegionSpec((0, 2, 0, 2), period=3)
    for call in (lambda: place(x, torch.zeros(1, 4, 4), "a"), lambda: extract(x, "b")):
        with pytest.raises(SchemaError, match="before it was changed"):
            call()


def test_region_identity_called_alone_refuses_a_changed_layout():
    sc = _canvas()
    before = sc.region_identity("a")
    sc.layout.regions["a"] = RegionSpec((0, 2, 0, 2), period=2)
    for call in (sc.region_identity, sc.region_embedding):
        with pytest.raises(SchemaError, match="before it was changed"):
            call("a")
    sc.layout.regions["a"] = RegionSpec((0, 2, 0, 2))  # changed back: accepted, as everywhere
    assert torch.equal(sc.region_identity("a"), before)


def test_t_current_moves_no_compiled_graph():
    torch._dynamo.reset()
    sc = _canvas()
    counter = CompileCounter()
    compiled = torch.compile(sc.create_empty, backend=counter, fullgraph=True)
    first = compiled(2)
    for t in (1, 2, 0):
        sc.layout.t_current = t
        assert torch.equal(compiled(2), first)
    assert counter.frame_count == 1
