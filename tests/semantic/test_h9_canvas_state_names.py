"""A canvas whose semantic conditioner refuses a state of other regions loads nothing: neither
its own tensors nor, inside a larger model, the canvas's; canvas-engineering states (no names)
still load both ways."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from canvas_core import CanvasLayout, SpatiotemporalCanvas
from canvas_core.errors import SchemaError
from canvas_core.runtime.semantic_conditioner import SemanticConditioner
from tests.semantic._conditioners import random_conditioner as _cond

torch.set_num_threads(1)

KW = dict(T=1, H=2, W=2, d_model=8, regions={"a": (0, 1, 0, 1, 0, 2), "b": (0, 1, 1, 2, 0, 2)})
LAYOUT = CanvasLayout(**KW)


def _canvas(names, seed: int) -> SpatiotemporalCanvas:
    torch.manual_seed(seed)
    return SpatiotemporalCanvas(LAYOUT, semantic_conditioner=_cond(names, seed))


class _World(nn.Module):
    def __init__(self, canvas: SpatiotemporalCanvas) -> None:
        super().__init__()
        self.canvas = canvas
        self.head = nn.Linear(8, 2)


def _snapshot(module: nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _unchanged(module: nn.Module, before: dict) -> list:
    return [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]


def test_a_refused_canvas_state_changes_no_tensor_of_the_canvas():
    saved = _canvas(["a", "b"], 0).state_dict()
    target = _canvas(["a", "c"], 1)
    before = _snapshot(target)
    with pytest.raises(SchemaError, match=r"only in the state: \['b'\]; only here: \['c'\]"):
        target.load_state_dict(saved)
    assert _unchanged(target, before) == []  # empty_token used to load before the refusal


def test_a_canvas_inside_a_model_is_refused_before_its_tensors_load():
    saved = _World(_canvas(["a", "b"], 0)).state_dict()
    target = _World(_canvas(["a", "c"], 1))
    before = _snapshot(target.canvas)
    with pytest.raises(SchemaError, match="'canvas.semantic_conditioner'"):
        target.load_state_dict(saved)
    assert _unchanged(target.canvas, before) == []


def test_names_recorded_only_for_the_conditioner_are_checked_up_front():
    """A state written before the canvas recorded the names itself (only the conditioner's entry
    holds them) is still refused before the canvas changes."""
    saved = _canvas(["a", "b"], 0).state_dict()
    del saved._metadata[""]["conditioner_region_names"]
    target = _canvas(["a", "c"], 1)
    before = _snapshot(target)
    with pytest.raises(SchemaError, match="semantic_conditioner"):
        target.load_state_dict(saved)
    assert _unchanged(target, before) == []


def test_the_same_regions_load_exactly_direct_and_nested():
    src = _World(_canvas(["b", "a"], 0))
    dst = _World(_canvas(["a", "b"], 1))
    dst.load_state_dict(src.state_dict())
    assert _unchanged(dst, _snapshot(src)) == []
    canvas = _canvas(["a", "b"], 2)
    canvas.load_state_dict(src.canvas.state_dict())
    assert _unchanged(canvas, _snapshot(src.canvas)) == []


def test_a_state_without_names_still_loads_by_row():
    src, dst = _canvas(["a", "b"], 0), _canvas(["a", "c"], 1)
    dst.load_state_dict(dict(src.state_dict()))
    torch.testing.assert_close(dst.semantic_conditioner.get_all_conditioning(),
                               src.semantic_conditioner.get_all_conditioning())


def test_canvas_engineering_states_load_both_ways():
    ce = pytest.importorskip("canvas_engineering")
    torch.manual_seed(3)
    embs = {n: torch.randn(4) for n in ("a", "b")}
    theirs = ce.SpatiotemporalCanvas(ce.CanvasLayout(**KW), semantic_conditioner=ce.SemanticConditioner(8, 4, embs))
    ours = SpatiotemporalCanvas(LAYOUT, semantic_conditioner=SemanticConditioner(8, 4, {"a": [0.0] * 4,
                                                                                       "b": [0.0] * 4}))
    ours.load_state_dict(theirs.state_dict())
    assert torch.equal(ours.empty_token, theirs.empty_token)
    torch.testing.assert_close(ours.semantic_conditioner.get_all_conditioning(),
                               theirs.semantic_conditioner.get_all_conditioning())
    with torch.no_grad():
        ours.empty_token.add_(1.0)
    theirs.load_state_dict(ours.state_dict())  # our names in the metadata are no obstacle there
    assert torch.equal(ours.empty_token, theirs.empty_token)


@pytest.mark.parametrize("other", [dict(names=["a", "b", "c"]), dict(bias=True)])
def test_a_conditioner_state_that_does_not_fit_changes_no_tensor_of_the_canvas(other):
    """Torch copied the canvas's own tensors, then raised a bare RuntimeError for the
    conditioner's shapes or names."""
    from canvas_core.errors import CheckpointError

    cond = SemanticConditioner(8, 4, {n: [1.0] * 4 for n in other.get("names", ["a", "b"])},
                               projector_bias=other.get("bias", False))
    saved = dict(SpatiotemporalCanvas(LAYOUT, semantic_conditioner=cond).state_dict())
    target = _canvas(["a", "b"], 1)
    before = _snapshot(target)
    with pytest.raises(CheckpointError, match="semantic_conditioner does not fit") as info:
        target.load_state_dict(saved)
    assert isinstance(info.value, RuntimeError)  # what torch (and canvas-engineering) raised
    assert _unchanged(target, before) == []
    if "bias" in other:  # only an extra tensor: a non-strict load takes the rest, as torch does
        target.load_state_dict(saved, strict=False)
        assert torch.equal(target.empty_token, saved["empty_token"])
