"""ExecutionPlan.to_dense / attention_mask with arguments they cannot use: an integer dtype (it
rounded every weight below 1 to 0, so linked pairs read as unlinked), a device torch does not
know, a plan that is not an ExecutionPlan (before: bare RuntimeError / AttributeError)."""

from __future__ import annotations

import pytest
import torch

import canvas_core as cc
from canvas_core.compiler.lowering import lower
from canvas_core.errors import CanvasError, CanvasTypeError, SchemaError
from canvas_core.runtime.plan_tensors import attention_mask


def _plan():
    layout = cc.CanvasLayout(T=2, H=1, W=4, d_model=8, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 0, 1, 2, 4)})
    return lower(cc.CanvasTopology(connections=[cc.Connection("a", "b", weight=0.5)]), layout)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, "float32", torch.complex64])
def test_a_dtype_that_cannot_hold_the_weights_is_refused(dtype):
    with pytest.raises(CanvasTypeError, match="dtype must be a floating torch dtype") as info:
        _plan().to_dense(dtype=dtype)
    assert isinstance(info.value, TypeError)


def test_float_and_bool_dtypes_still_give_the_weights_and_the_links():
    plan = _plan()
    w = plan.to_dense(dtype=torch.float64)
    assert w.max().item() == 0.5 and int((w > 0).sum()) == 16  # 4 a positions read the 4 b positions
    linked = plan.to_dense(dtype=torch.bool)
    assert linked.dtype == torch.bool and torch.equal(linked, w > 0)


def test_an_unknown_device_is_refused_naming_it():
    with pytest.raises(SchemaError, match="device 'nope'") as info:
        _plan().to_dense(device="nope")
    assert isinstance(info.value, CanvasError)


def test_a_plan_that_is_not_an_execution_plan_is_refused():
    with pytest.raises(CanvasTypeError, match="plan must be an ExecutionPlan.*got str"):
        attention_mask(None, None, plan="causal")
