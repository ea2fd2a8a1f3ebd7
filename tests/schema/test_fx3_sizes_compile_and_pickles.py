"""Layout sizes read only T and spatial_shape: ``t_current`` moving under ``torch.compile`` makes
no new graph, a layout mid-edit still has sizes (as in canvas-engineering); a layout pickle names
no class an older canvas-core lacks."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch

from canvas_core import CanvasLayout, RegionSpec, SpatiotemporalCanvas
from canvas_core.errors import CanvasTypeError, RegionError


def _layout() -> CanvasLayout:
    return CanvasLayout(T=6, H=4, W=4, d_model=8, regions={"a": (0, 6, 0, 2, 0, 2), "b": (0, 6, 2, 4, 2, 4)})


@pytest.mark.parametrize("call", ["extract", "place", "create_empty", "region_embedding"])
def test_moving_t_current_compiles_one_frame(call: str) -> None:
    from torch._dynamo.testing import CompileCounter

    torch.set_num_threads(1)
    layout = _layout()
    canvas = SpatiotemporalCanvas(layout)
    x, emb = canvas.create_empty(2), torch.randn(2, 24, 8)
    calls = {"extract": lambda: canvas.extract(x, "b"), "place": lambda: canvas.place(x, emb, "a"),
             "create_empty": lambda: canvas.create_empty(2), "region_embedding": lambda: canvas.region_embedding("a")}
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(calls[call], backend=counter)
    for t in range(6):  # t_current moves no index: the graph stays valid
        layout.t_current = t
        torch.testing.assert_close(compiled(), calls[call]())
    assert counter.frame_count == 1


def test_sizes_of_a_layout_mid_edit_match_canvas_engineering() -> None:
    layout = _layout()
    layout.T = 2  # the regions still span 6 frames: the user sizes them next
    assert (layout.num_positions, layout.spatial_volume, layout.n_spatial_dims) == (32, 16, 2)
    ce = pytest.importorskip("canvas_engineering")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ce.CanvasLayout(T=6, H=4, W=4, d_model=8, regions={"a": (0, 6, 0, 2, 0, 2)})
    theirs.T = 2
    assert theirs.num_positions == layout.num_positions
    with pytest.raises(RegionError, match="region 'a'.*leave the canvas on axis t"):
        layout.region_indices("a")  # a region query still checks the edit
    layout.regions = {"a": RegionSpec((0, 2, 0, 2, 0, 2)), "b": RegionSpec((0, 2, 2, 4, 2, 4))}
    assert layout.region_indices("a")[:2] == [0, 1] and layout.num_positions == 32


@pytest.mark.parametrize("attribute, value", [("spatial_shape", None), ("T", "2"), ("T", 2.5)])
def test_sizes_still_refuse_a_bad_t_or_shape_by_name(attribute: str, value: object) -> None:
    layout = _layout()
    setattr(layout, attribute, value)
    with pytest.raises(CanvasTypeError, match=f"CanvasLayout {attribute}"):
        layout.num_positions


class _Names(pickle.Unpickler):
    """Records every class a pickle names (what an older version must have to load it)."""

    def __init__(self, data: bytes) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self.names: set = set()

    def find_class(self, module: str, name: str) -> object:
        self.names.add((module, name))
        return super().find_class(module, name)


def test_a_layout_pickle_names_only_classes_older_versions_have() -> None:
    layout = _layout()
    layout.region_indices("a")  # a checked layout, with its caches filled
    reader = _Names(pickle.dumps(layout))
    again = reader.load()
    assert reader.names == {("canvas_core.schema.layout", "CanvasLayout"),
                            ("canvas_core.schema._region_dict", "RegionDict"),
                            ("canvas_core.schema.region", "RegionSpec")}
    assert type(again._validated) is tuple and again.region_indices("b")[:2] == [10, 11]
