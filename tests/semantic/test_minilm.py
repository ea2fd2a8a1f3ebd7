"""Real text embeddings, fully offline: the ``minilm`` embedder from canvas-plugin-semantic.

The model is loaded once per module (a couple of seconds on CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from canvas_core.plugins import EMBEDDER_REGISTRY  # noqa: E402
from canvas_core.schema import CanvasLayout, CanvasSchema, RegionSpec, transfer_distance  # noqa: E402
from canvas_core.semantic import compute_semantic_embeddings  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    "minilm" not in EMBEDDER_REGISTRY,
    reason="canvas-plugin-semantic not installed (pip install -e plugins/canvas-plugin-semantic)",
)


@pytest.fixture(scope="module")
def minilm():
    from canvas_core.plugins import create_embedder

    return create_embedder("minilm")


def _layout(types):
    regions = {name: RegionSpec((0, 1, i, i + 1), semantic_type=t) for i, (name, t) in enumerate(types.items())}
    return CanvasLayout(T=1, d_model=8, spatial_shape=(len(types),), regions=regions)


def test_transfer_distance_orders_modalities(minilm):
    layout = compute_semantic_embeddings(
        _layout({"rgb": "RGB video", "depth": "depth video", "joints": "joint angles"}), embedder=minilm)
    r = layout.regions
    assert {s.embedding_model for s in r.values()} == {MODEL}
    assert all(len(s.semantic_embedding) == 384 for s in r.values())
    assert sum(x * x for x in r["rgb"].semantic_embedding) == pytest.approx(1.0, abs=1e-4)
    assert transfer_distance(r["rgb"], r["depth"]) < transfer_distance(r["rgb"], r["joints"])
    assert transfer_distance(r["rgb"], r["rgb"]) == pytest.approx(0.0, abs=1e-5)


def test_compatible_regions_finds_semantic_matches(minilm):
    robot_a = CanvasSchema(_layout({
        "cam": "RGB camera video frames", "arm": "robot arm joint angles", "reward": "scalar task reward"}))
    robot_b = CanvasSchema(_layout({
        "q": "joint positions of the robot arm", "img": "color video from a camera", "r": "reward signal"}))
    a = compute_semantic_embeddings(robot_a, embedder=minilm)
    b = compute_semantic_embeddings(robot_b, embedder=minilm)
    # best partner of every region of A is its semantic counterpart in B
    pairs = a.compatible_regions(b, threshold=2.0)
    best = {}
    for x, y, d in pairs:  # sorted by distance, so the first hit per region is its best
        best.setdefault(x, (y, d))
    assert {x: y for x, (y, _) in best.items()} == {"cam": "img", "arm": "q", "reward": "r"}
    # a threshold between matching and non-matching distances keeps exactly the matches
    worst_match = max(d for _, d in best.values())
    cross = [d for x, y, d in pairs if (x, y) not in {("cam", "img"), ("arm", "q"), ("reward", "r")}]
    assert worst_match < min(cross)
    kept = a.compatible_regions(b, threshold=(worst_match + min(cross)) / 2)
    assert {(x, y) for x, y, _ in kept} == {("cam", "img"), ("arm", "q"), ("reward", "r")}
    # regions embedded with another model are not compared
    other = compute_semantic_embeddings(robot_b, embedder=lambda ts: [[1.0, 0.0]] * len(ts))
    assert a.compatible_regions(other, threshold=2.0) == []


def _run_cli(*args, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HOME=str(tmp_path / "empty_hf_home"))  # no cache to fall back on: files come from the package
    return subprocess.run([sys.executable, "-m", "canvas_core.cli", "embed", *args], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)


def test_cli_embed_end_to_end_offline(tmp_path):
    schema = CanvasSchema(CanvasLayout(T=2, d_model=8, spatial_shape=(2, 2), regions={
        "camera.rgb_video": RegionSpec((0, 2, 0, 1, 0, 2), semantic_type="RGB video"),
        "robot.joint_angles": (0, 2, 1, 2, 0, 2),
    }))
    src = tmp_path / "schema.json"
    schema.to_json(src)
    before = src.read_text()
    out = tmp_path / "out.json"
    proc = _run_cli(str(src), "-o", str(out), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2 regions" in proc.stdout and MODEL in proc.stdout
    assert src.read_text() == before                      # input untouched
    loaded = CanvasSchema.from_json(out)
    for name, spec in loaded.layout.regions.items():
        assert spec.semantic_embedding is not None and len(spec.semantic_embedding) == 384, name
        assert spec.embedding_model == MODEL
    assert loaded.layout.regions["robot.joint_angles"].semantic_type == "robot / joint angles"
    assert loaded.layout.regions["camera.rgb_video"].semantic_type == "RGB video"
    assert loaded.layout.regions["camera.rgb_video"].bounds == (0, 2, 0, 1, 0, 2)
    # without -o the schema goes to stdout; same vectors
    proc = _run_cli(str(src), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    printed = CanvasSchema.from_dict(json.loads(proc.stdout))
    for name in loaded.layout.regions:
        assert printed.layout.regions[name].semantic_embedding == pytest.approx(
            loaded.layout.regions[name].semantic_embedding, abs=1e-6)


def test_cli_errors_are_clear(tmp_path):
    proc = _run_cli(str(tmp_path / "missing.json"), tmp_path=tmp_path)
    assert proc.returncode == 2 and "missing.json" in proc.stderr and "not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    src = tmp_path / "s.json"
    CanvasSchema(CanvasLayout(T=1, d_model=4, regions={"a": (0, 1)})).to_json(src)
    proc = _run_cli(str(src), "--embedder", "no_such_embedder", tmp_path=tmp_path)
    assert proc.returncode == 2 and "no_such_embedder" in proc.stderr
    assert "pip install canvas-plugin-semantic" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_embed_keeps_a_program_a_program(tmp_path):
    """A program file (schema + region programs) is embedded like a schema and written back as a
    program: its region and connection programs unchanged (it used to be refused, the program
    keys read as unknown schema keys)."""
    from canvas_core.program import CanvasProgram, RegionProgram

    schema = CanvasSchema(CanvasLayout(T=2, d_model=8, spatial_shape=(2, 2), regions={
        "camera": (0, 2, 0, 1, 0, 2), "arm": (0, 2, 1, 2, 0, 2)}))
    program = CanvasProgram(schema=schema, regions={"arm": RegionProgram(family="action")})
    src, out = tmp_path / "program.json", tmp_path / "out.json"
    program.to_json(src)
    proc = _run_cli(str(src), "-o", str(out), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    loaded = CanvasProgram.from_json(out)
    assert loaded.regions == program.regions and loaded.connections == program.connections
    for name, spec in loaded.layout.regions.items():
        assert spec.semantic_embedding is not None and spec.embedding_model == MODEL, name
