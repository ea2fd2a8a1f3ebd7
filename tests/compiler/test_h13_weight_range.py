"""Connection weights above the largest float32 are refused: the dense mask held ``inf`` and the
layer's mixing weight (the sum of the connection weights linking a query) overflowed, so two
connections of weight 1e308 turned a layer's output into NaN (one fn type) or zeros (two)."""

from __future__ import annotations

import pytest
import torch

from canvas_core import CanvasAttention
from canvas_core.errors import SchemaError, TopologyError
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection

MAX_WEIGHT = 3.4028234663852886e38  # the largest float32 (canvas_core.schema.topology.MAX_WEIGHT)
LAYOUT = CanvasLayout(T=1, d_model=4, spatial_shape=(3,), regions={"q": (0, 1, 0, 1), "a": (0, 1, 1, 2), "b": (0, 1, 2, 3)})


@pytest.mark.parametrize("w", [1e39, 1e308, 1.7e308])
def test_a_weight_above_float32_is_refused_naming_the_connection(w: float) -> None:
    with pytest.raises(TopologyError, match=r"Connection\('q' -> 'a'\): weight .* use a weight <="):
        Connection("q", "a", weight=w)


def test_a_schema_file_with_a_huge_weight_is_refused() -> None:
    schema = CanvasSchema(layout=LAYOUT, topology=CanvasTopology([Connection("q", "a")]))
    d = schema.to_dict()
    d["topology"][0]["weight"] = 1e308
    with pytest.raises(SchemaError, match=r"weight 1e\+308 is above"):
        CanvasSchema.from_dict(d)


def test_the_bound_is_the_one_the_topology_module_publishes() -> None:
    from canvas_core.schema.topology import MAX_WEIGHT as published

    assert published == MAX_WEIGHT
    Connection("q", "a", weight=MAX_WEIGHT)  # the bound itself is accepted


@pytest.mark.parametrize("second_fn", [None, "self_attention"])
def test_the_largest_weight_still_gives_finite_masks_and_outputs(second_fn) -> None:
    topo = CanvasTopology([Connection("q", "a", weight=MAX_WEIGHT), Connection("q", "b", weight=MAX_WEIGHT, fn=second_fn)])
    assert torch.isfinite(topo.to_attention_mask(LAYOUT)).all()
    x = torch.randn(1, 3, 4)
    torch.manual_seed(0)
    out = CanvasAttention(topo, LAYOUT, n_heads=1)(x)
    ones = CanvasTopology([Connection("q", "a"), Connection("q", "b", fn=second_fn)])
    torch.manual_seed(0)
    ref = CanvasAttention(ones, LAYOUT, n_heads=1)(x)
    # equal weights on both keys: the same output as weight 1 (the mix is scale-free)
    torch.testing.assert_close(out, ref)
