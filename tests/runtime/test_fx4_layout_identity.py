"""A SpatiotemporalCanvas refuses a layout object other than the one it was built from."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from canvas_core import CanvasLayout, SpatiotemporalCanvas
from canvas_core.errors import SchemaError


def _layout(r1: tuple) -> CanvasLayout:
    return CanvasLayout(T=4, d_model=4, spatial_shape=(2,), regions={"r0": (0, 1, 0, 2), "r1": r1})


def _x() -> torch.Tensor:
    return torch.arange(8.0).view(1, 8, 1).expand(1, 8, 4).contiguous()


@pytest.mark.parametrize("compiled", [False, True])
def test_new_layout_object_assigned_is_refused(compiled: bool) -> None:
    torch._dynamo.reset()
    sc = SpatiotemporalCanvas(_layout((1, 2, 0, 2)))

    def f(x: torch.Tensor) -> torch.Tensor:
        return sc.extract(x, "r1")

    run = torch.compile(f, backend="eager") if compiled else f
    assert run(_x())[0, :, 0].tolist() == [2.0, 3.0]
    sc.layout = _layout((3, 4, 0, 2))  # a fresh layout: revision 0, like the one built from
    with pytest.raises(SchemaError, match="build the SpatiotemporalCanvas again"):
        run(_x())


def test_same_regions_new_object_refused_eager() -> None:
    sc = SpatiotemporalCanvas(_layout((1, 2, 0, 2)))
    sc.layout = _layout((1, 2, 0, 2))
    with pytest.raises(SchemaError, match="another CanvasLayout"):
        sc.create_empty(1)


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))])
def test_copies_keep_working(clone) -> None:
    sc = clone(SpatiotemporalCanvas(_layout((1, 2, 0, 2))))
    assert sc.extract(_x(), "r1")[0, :, 0].tolist() == [2.0, 3.0]
