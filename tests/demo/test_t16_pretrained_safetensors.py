"""`--pretrained` directories are read from safetensors only: a directory holding pickled
``.bin`` weights (``save_pretrained(safe_serialization=False)``) is refused, not unpickled."""

import pytest
import torch

from canvas_core.errors import CanvasError


def _tiny():
    from diffusers import CogVideoXTransformer3DModel

    from canvas_core.demo.backbones import COGVIDEOX_TINY

    torch.manual_seed(0)
    return CogVideoXTransformer3DModel(**COGVIDEOX_TINY)


def test_pickled_weights_are_refused_not_unpickled(tmp_path, monkeypatch):
    from canvas_core.demo.backbones import _load_diffusers

    _tiny().save_pretrained(str(tmp_path / "bin"), safe_serialization=False)
    assert list(tmp_path.joinpath("bin").glob("*.bin")) and not list(tmp_path.joinpath("bin").glob("*.safetensors"))
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or real(*a, **k))
    with pytest.raises(CanvasError, match="pickled .bin weights are not read"):
        _load_diffusers("diffusers.CogVideoXTransformer3DModel")(tmp_path / "bin")
    assert calls == []  # nothing was unpickled on the way to the refusal


def test_safetensors_weights_load_exactly(tmp_path):
    from canvas_core.demo.backbones import _load_diffusers

    saved = _tiny()
    saved.save_pretrained(str(tmp_path / "st"))
    loaded = _load_diffusers("diffusers.CogVideoXTransformer3DModel")(tmp_path / "st")
    for (n, a), (_, b) in zip(saved.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
