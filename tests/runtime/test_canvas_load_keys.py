"""`SpatiotemporalCanvas.load_state_dict` names missing and unexpected entries as `state_dict()`
spells them (`modality_embeddings.<region>`, `family_carrier_embedding.*`), never by the internal
`r<k>` / `family_carrier` names, in the returned keys and in strict loading's error."""

import pytest
import torch
from torch import nn

from canvas_core import CanvasLayout, CanvasProgram, CanvasSchema, RegionProgram, SpatiotemporalCanvas


def _canvas(*names, program=False):
    regions = {n: (0, 2, 0, 1, k, k + 1) for k, n in enumerate(names)}
    layout = CanvasLayout(T=2, H=1, W=len(names), d_model=8, regions=regions)
    prog = None
    if program:
        prog = CanvasProgram(schema=CanvasSchema(layout), regions={n: RegionProgram(family="action") for n in names})
    return SpatiotemporalCanvas(layout, program=prog)


def test_a_missing_region_embedding_is_named_by_its_saved_key():
    video, camera = _canvas("video"), _canvas("camera")
    assert "modality_embeddings.camera" in camera.state_dict()
    result = camera.load_state_dict(video.state_dict(), strict=False)
    assert result.missing_keys == ["modality_embeddings.camera"]  # was modality_embeddings.r0
    assert result.unexpected_keys == ["modality_embeddings.video"]
    with pytest.raises(RuntimeError) as err:
        camera.load_state_dict(video.state_dict())
    assert '"modality_embeddings.camera"' in str(err.value) and "r0" not in str(err.value)


def test_keys_of_a_canvas_inside_a_model_and_of_the_carrier_table():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.canvas = _canvas("r1", "x", program=True)  # region r1 saved as r1, region x as x

    model = Model()
    sd = model.state_dict()
    dropped = ["canvas.modality_embeddings.x"] + [k for k in sd if k.startswith("canvas.family_carrier_embedding.")]
    assert len(dropped) > 1
    partial = {k: v for k, v in sd.items() if k not in dropped}
    partial["canvas.family_carrier_embedding.extra"] = torch.zeros(1)
    result = model.load_state_dict(partial, strict=False)
    assert sorted(result.missing_keys) == sorted(dropped) and set(result.missing_keys) <= set(sd)
    assert result.unexpected_keys == ["canvas.family_carrier_embedding.extra"]
    assert model.load_state_dict(sd).missing_keys == []  # the full dict still loads exactly
