"""A canvas checkpoint records its identity binders' configuration and refuses a model whose
binders were built otherwise, even where the tensors have the same names and shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from canvas_core import CanvasLayout, CanvasProgram, CanvasSchema, IdentitySpec, RegionProgram
from canvas_core.checkpoints import load_canvas_checkpoint, read_canvas_checkpoint_header, save_canvas_checkpoint
from canvas_core.errors import CheckpointError
from canvas_core.runtime.canvas import SpatiotemporalCanvas

LAYOUT = CanvasLayout(T=2, H=4, W=4, d_model=32, regions={"vision": (0, 2, 0, 3, 0, 4), "objects": (0, 2, 3, 4, 0, 4)})
SCHEMA = CanvasSchema(layout=LAYOUT)
SAVED = dict(mode="tracklet", slot_capacity=5, birth_death=True, binding_fn="cross_attention")


def _model(**identity) -> SpatiotemporalCanvas:
    prog = CanvasProgram(schema=SCHEMA, regions={
        "vision": RegionProgram(family="observation"),
        "objects": RegionProgram(family="state", identity=IdentitySpec(**identity))})
    return SpatiotemporalCanvas(LAYOUT, program=prog)


@pytest.fixture
def saved(tmp_path: Path) -> str:
    torch.manual_seed(0)
    path = str(tmp_path / "c.safetensors")
    save_canvas_checkpoint(_model(**SAVED), path, SCHEMA)
    return path


def test_the_header_records_each_binder(saved: str) -> None:
    header = read_canvas_checkpoint_header(saved)
    assert header["identity_binders"] == {"identity_binders": {"objects": SAVED}}


@pytest.mark.parametrize("changed, said", [
    (dict(binding_fn="slot_attention"), "binding_fn 'cross_attention' in the file, 'slot_attention' in the model"),
    (dict(mode="persistent", birth_death=False), "mode 'tracklet' in the file, 'persistent' in the model"),
])
def test_same_tensors_other_binder_is_refused(saved: str, changed: dict, said: str) -> None:
    model = _model(**{**SAVED, **changed})
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    if "binding_fn" in changed:  # the case the tensors alone cannot catch
        assert shapes == {k: v.shape for k, v in _model(**SAVED).state_dict().items()}
    with pytest.raises(CheckpointError, match=r"saved with other identity binders than the model's: identity "
                                              r"binders 'identity_binders' region 'objects': " + said):
        load_canvas_checkpoint(model, saved, SCHEMA)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing loaded


def test_the_same_binders_load(saved: str) -> None:
    model = _model(**SAVED)
    header = load_canvas_checkpoint(model, saved, SCHEMA)
    assert header["identity_binders"]["identity_binders"]["objects"]["slot_capacity"] == 5


def test_a_file_without_the_entry_still_loads(saved: str, tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(saved, framework="pt") as fh:
        meta = {k: v for k, v in fh.metadata().items() if k != "identity_binders"}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    old = str(tmp_path / "old.safetensors")
    save_file(tensors, old, metadata=meta)
    load_canvas_checkpoint(_model(**{**SAVED, "binding_fn": "slot_attention"}), old, SCHEMA)  # nothing to check


def test_a_malformed_entry_is_a_corrupt_header(saved: str, tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(saved, framework="pt") as fh:
        meta = {**fh.metadata(), "identity_binders": json.dumps({"identity_binders": {"objects": {"mode": 1}}})}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    bad = str(tmp_path / "bad.safetensors")
    save_file(tensors, bad, metadata=meta)
    with pytest.raises(CheckpointError, match="corrupt header: its 'identity_binders' entry"):
        load_canvas_checkpoint(_model(**SAVED), bad, SCHEMA)
