"""The Life demo's pretraining save writes its prompt and record atomically: a save that fails
(here: a NaN prompt, refused before anything is written) leaves the files of the previous save
as they were."""

from __future__ import annotations

import json

import pytest
import torch

from canvas_core.errors import CheckpointError

pytest.importorskip("diffusers")
torch.set_num_threads(1)


def _model(prompt: torch.Tensor):
    from diffusers import CogVideoXTransformer3DModel

    from canvas_core.demo import life_pretrain as lp

    m = CogVideoXTransformer3DModel(**lp.COGVIDEOX_LIFE)
    object.__setattr__(m, "demo_prompt", prompt)  # as the pretraining keeps it: outside the state dict
    return m


def test_a_failed_save_keeps_the_previous_prompt_and_record(tmp_path):
    from safetensors.torch import load_file

    from canvas_core.demo import life_pretrain as lp

    good = torch.randn(2, 4)
    lp._save(_model(good), tmp_path, lp.LifePretrainConfig(), [(1, 0.5, 0.25, 0.9)])
    record = (tmp_path / "pretrain.json").read_text()
    weights_written = (tmp_path / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert json.loads(record)["curve"][0]["one_step_exact"] == 0.25
    with pytest.raises(CheckpointError, match="Life demo prompt"):
        lp._save(_model(torch.full((2, 4), float("nan"))), tmp_path, lp.LifePretrainConfig(), [(2, 0.1, 1.0, 1.0)])
    assert torch.equal(load_file(str(tmp_path / "prompt.safetensors"))["prompt"], good)
    assert (tmp_path / "pretrain.json").read_text() == record
    assert (tmp_path / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == weights_written
