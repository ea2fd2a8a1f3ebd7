"""`dense_weights` and `attention_mask` called directly name themselves in their errors, not
`ExecutionPlan.to_dense` (which still names itself)."""

from __future__ import annotations

import pytest
import torch

from canvas_core.compiler.lowering import lower
from canvas_core.errors import CanvasTypeError, SchemaError, SizeLimitError
from canvas_core.runtime.plan_tensors import attention_mask, dense_weights
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection

LAYOUT = CanvasLayout(T=1, d_model=4, spatial_shape=(4,), regions={"a": (0, 1, 0, 2), "b": (0, 1, 2, 4)})
TOPO = CanvasTopology([Connection("a", "b")])


def test_dense_weights_names_itself() -> None:
    plan = lower(TOPO, LAYOUT)
    with pytest.raises(CanvasTypeError, match=r"^dense_weights: dtype must be") as info:
        dense_weights(plan, dtype=torch.int64)
    assert "to_dense" not in str(info.value)
    with pytest.raises(SchemaError, match=r"^dense_weights: cannot place the weights on device"):
        dense_weights(plan, device="nodevice")


def test_to_dense_still_names_to_dense() -> None:
    with pytest.raises(CanvasTypeError, match=r"^ExecutionPlan\.to_dense: dtype must be"):
        lower(TOPO, LAYOUT).to_dense(dtype=torch.int64)


def test_attention_mask_names_itself(monkeypatch) -> None:
    with pytest.raises(SchemaError, match=r"^attention_mask: cannot place the weights on device"):
        attention_mask(TOPO, LAYOUT, device="nodevice")
    monkeypatch.setenv("CANVAS_MAX_ELEMENTS", "10")
    with pytest.raises(SizeLimitError, match=r"^attention_mask: the dense \(N, N\) weight matrix of 4 positions"):
        attention_mask(TOPO, LAYOUT)


def test_the_topology_mask_names_the_topology_method(monkeypatch) -> None:
    monkeypatch.setenv("CANVAS_MAX_ELEMENTS", "10")
    layout = CanvasLayout(T=1, H=2, W=2, d_model=8, regions={"a": (0, 1, 0, 2, 0, 2)})
    top = CanvasTopology(connections=[Connection("a", "a")])
    with pytest.raises(SizeLimitError, match=r"^CanvasTopology\.to_attention_mask: the dense \(N, N\)"):
        top.to_attention_mask(layout)
