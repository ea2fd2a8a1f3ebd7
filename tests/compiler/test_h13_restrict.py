"""``restrict`` (the plan of a layer's ``active_regions``): a value that is not a collection of
names is a ``CanvasTypeError`` (was a bare TypeError), and a name the layout lacks is an
``UnknownRegionError``, as in ``CanvasAttention`` (restrict returned an empty plan)."""

from __future__ import annotations

import warnings

import pytest
import torch

from canvas_core import CanvasAttention
from canvas_core.compiler.lowering import lower, restrict
from canvas_core.errors import CanvasTypeError, UnknownRegionError
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection

LAYOUT = CanvasLayout(T=1, d_model=4, spatial_shape=(2,), regions={"vision": (0, 1, 0, 1), "action": (0, 1, 1, 2)})
TOPO = CanvasTopology([Connection("vision", "action"), Connection("action", "vision")])


@pytest.mark.parametrize("bad", [5, None, [["vision"]]])
def test_restrict_refuses_what_is_not_a_collection_of_names(bad) -> None:
    with pytest.raises(CanvasTypeError, match="source_regions must be a set or list of region names"):
        restrict(lower(TOPO, LAYOUT), bad)


def test_restrict_refuses_a_misspelt_region_as_the_layer_does() -> None:
    plan = lower(TOPO, LAYOUT)
    with pytest.raises(UnknownRegionError, match=r"\['vison'\].*Did you mean 'vision'"):
        restrict(plan, {"vison"})  # it returned an empty plan: the region's queries unchanged
    with pytest.raises(UnknownRegionError, match="vison"):
        CanvasAttention(TOPO, LAYOUT, n_heads=1)(torch.randn(1, 2, 4), active_regions={"vison"})


def test_known_regions_restrict_as_before() -> None:
    plan = lower(TOPO, LAYOUT)
    sub = restrict(plan, {"vision"})
    assert sub.groups["cross_attention"].n_rects == 1
    layer = CanvasAttention(TOPO, LAYOUT, n_heads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = layer(torch.randn(1, 2, 4), active_regions={"vision"})
    assert out.shape == (1, 2, 4)


@pytest.mark.parametrize("resolve_fn", [[None, None], ["", "cross_attention"], lambda c, layout: 5])
def test_lower_refuses_a_fn_type_that_is_not_a_name(resolve_fn) -> None:
    # they became the fn types "None", "" and "5" (a registry lookup failed later, far from the cause)
    with pytest.raises(CanvasTypeError, match=r"fn type of connection #0 \('vision' -> 'action'\)"):
        lower(TOPO, LAYOUT, resolve_fn=resolve_fn)


def test_lower_takes_fn_type_names() -> None:
    plan = lower(TOPO, LAYOUT, resolve_fn=["self_attention", "cross_attention"])
    assert plan.fn_of_connection == ["self_attention", "cross_attention"]
    assert lower(TOPO, LAYOUT, resolve_fn=lambda c, layout: "x").fn_types == ("x",)
