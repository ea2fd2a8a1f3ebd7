"""A CanvasAttention layer run under torch.compile refuses a layout changed after it was built, as
the eager layer does, instead of running the plan of the old layout; changing ``t_current`` (not
part of the layer's geometry) neither refuses nor recompiles."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection, RegionSpec
from canvas_core.errors import SchemaError


def _layer():
    torch.manual_seed(0)
    lay = CanvasLayout(T=2, H=2, W=4, d_model=16, regions={"a": (0, 2, 0, 1, 0, 4), "b": (0, 2, 1, 2, 0, 4)})
    topo = CanvasTopology(connections=[Connection("b", "a"), Connection("a", "a")])
    return lay, CanvasAttention(topo, lay, n_heads=2)


@pytest.mark.parametrize("change", [
    lambda lay: lay.regions.__setitem__("a", RegionSpec((0, 2, 0, 1, 0, 4), period=2)),
    lambda lay: lay.regions.__setitem__("b", RegionSpec((0, 2, 1, 2, 0, 2))),
], ids=["period", "bounds"])
def test_a_compiled_layer_refuses_a_changed_layout(change):
    torch._dynamo.reset()
    lay, layer = _layer()
    compiled = torch.compile(layer, backend="eager")
    x = torch.randn(1, 16, 16)
    torch.testing.assert_close(compiled(x), layer(x))
    change(lay)
    with pytest.raises(SchemaError, match="built from this CanvasLayout before it was changed"):
        compiled(x)


def test_t_current_changes_neither_refuse_nor_recompile():
    torch._dynamo.reset()
    lay, layer = _layer()
    counter = CompileCounter()
    compiled = torch.compile(layer, backend=counter)
    x = torch.randn(1, 16, 16)
    compiled(x)
    for t in (1, 0, 1):
        lay.t_current = t
        compiled(x)
    assert counter.frame_count == 1
