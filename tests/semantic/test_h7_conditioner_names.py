"""A SemanticConditioner's saved state carries its region names; a state of other regions is
refused on load instead of conditioning the wrong regions."""

from __future__ import annotations

import io

import pytest
import torch

from canvas_core import CanvasLayout, SpatiotemporalCanvas
from canvas_core.errors import SchemaError
from canvas_core.runtime.semantic_conditioner import SemanticConditioner
from tests.semantic._conditioners import random_conditioner as _cond

torch.set_num_threads(1)


def test_state_names_its_regions():
    state = _cond(["b", "a"]).state_dict()
    assert state._metadata[""]["region_names"] == ["a", "b"]


def test_a_state_of_other_regions_is_refused_and_nothing_loads():
    saved = _cond(["a", "c"]).state_dict()
    target = _cond(["a", "b"], seed=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(SchemaError, match=r"only in the state: \['c'\]; only here: \['b'\]") as info:
        target.load_state_dict(saved)
    assert "Nothing of the conditioner was loaded" in str(info.value)
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())


def test_the_names_survive_torch_save():
    buf = io.BytesIO()
    torch.save(_cond(["x", "y"]).state_dict(), buf)
    buf.seek(0)
    with pytest.raises(SchemaError, match="regions"):
        _cond(["x", "z"]).load_state_dict(torch.load(buf))


def test_same_regions_in_another_order_load_exactly():
    src = _cond(["b", "a"])
    dst = SemanticConditioner(8, 4, {"a": [0.0] * 4, "b": [0.0] * 4})
    dst.load_state_dict(src.state_dict())
    torch.testing.assert_close(dst.get_conditioning("a"), src.get_conditioning("a"))
    torch.testing.assert_close(dst.get_conditioning("b"), src.get_conditioning("b"))


def test_a_state_without_names_still_loads():
    src, dst = _cond(["a", "c"]), _cond(["a", "b"], seed=1)
    dst.load_state_dict(dict(src.state_dict()))  # a plain dict: no metadata, rows by position
    torch.testing.assert_close(dst.get_all_conditioning(), src.get_all_conditioning())


def test_the_names_are_checked_inside_a_canvas_model():
    layout = CanvasLayout(T=1, H=2, W=2, d_model=8, regions={"a": (0, 1, 0, 1, 0, 2), "b": (0, 1, 1, 2, 0, 2)})
    saved = SpatiotemporalCanvas(layout, semantic_conditioner=_cond(["a", "b"])).state_dict()
    other = SpatiotemporalCanvas(layout, semantic_conditioner=_cond(["a", "c"]))
    with pytest.raises(SchemaError, match="semantic_conditioner"):
        other.load_state_dict(saved)
