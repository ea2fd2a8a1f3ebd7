"""SemanticConditioner refuses, naming the fix: a canvas on another device, an unhashable region
name, complex embeddings (whose imaginary part torch would drop with only a warning)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from canvas_core import CanvasLayout
from canvas_core.errors import CanvasTypeError, ShapeError, UnknownRegionError
from canvas_core.runtime.semantic_conditioner import SemanticConditioner

torch.set_num_threads(1)

LAYOUT = CanvasLayout(T=1, H=2, W=2, d_model=8, regions={"a": (0, 1, 0, 1, 0, 2), "b": (0, 1, 1, 2, 0, 2)})


def _cond() -> SemanticConditioner:
    return SemanticConditioner(8, 4, {"a": [1.0, 2.0, 3.0, 4.0], "b": [0.0, 1.0, 0.0, 1.0]})


def test_a_canvas_on_another_device_is_refused():
    with pytest.raises(ShapeError, match=r"canvas is on meta but the conditioner is on cpu; move the conditioner"):
        _cond().condition_canvas(torch.zeros(1, 4, 8, device="meta"), LAYOUT)


def test_an_unhashable_region_name_is_a_type_error_and_an_unknown_one_a_key_error():
    c = _cond()
    with pytest.raises(CanvasTypeError, match=r"region_name must be a region name \(str\), got list"):
        c.get_conditioning(["a"])
    with pytest.raises(UnknownRegionError) as info:
        c.get_conditioning(3)
    assert isinstance(info.value, KeyError)


@pytest.mark.parametrize("vec", [torch.tensor([1 + 1j, 2.0]), np.array([1 + 1j, 2.0])])
def test_complex_embeddings_are_refused(vec):
    with pytest.raises(CanvasTypeError, match="region 'a' is complex"):
        SemanticConditioner(8, 2, {"a": vec})


def test_semantic_types_must_be_texts():
    from canvas_core.semantic import compute_semantic_embeddings

    seen = []

    def embed(texts):
        seen.extend(texts)
        return [[1.0, 0.0]] * len(texts)

    with pytest.raises(CanvasTypeError, match=r"semantic_types\['a'\] must be the text to embed \(a str\), got int"):
        compute_semantic_embeddings(["a"], embed, {"a": 3})
    assert not seen  # refused before the embedder saw a non-text
    assert compute_semantic_embeddings(["a"], embed, {"a": "RGB video"}) == {"a": (1.0, 0.0)}
