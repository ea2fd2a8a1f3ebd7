"""docs/migrating.md, checked: a canvas-engineering project (world_model_project.py) run unchanged
but for the import line, under canvas_engineering and under canvas_core. Auto-sized projections
(positions, bounds, connections, masks), semantic texts, summaries and checkpoints (state dicts
loading both ways) must be the same. Skipped when canvas-engineering is not installed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("canvas_engineering")

SOURCE = (Path(__file__).parent / "world_model_project.py").read_text()
IMPORT = "import canvas_engineering as ce"


def _load(package: str):
    src = SOURCE if package == "canvas_engineering" else SOURCE.replace(IMPORT, f"import {package} as ce", 1)
    assert src.count(f"import {package} as ce") == 1, "the project has exactly one import line to change"
    name = f"_world_model_{package}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    try:
        exec(compile(src, f"world_model_project[{package}]", "exec"), mod.__dict__)
    finally:
        sys.modules.pop(name, None)
    return mod


@pytest.fixture(scope="module")
def runs():
    return _load("canvas_engineering").run(), _load("canvas_core").run()


PLAIN = ["spatial_shape", "H_W", "num_positions", "fields", "bounds", "indices", "semantic", "connections",
         "families", "bound_connections", "schema_json", "embedded_texts", "frozen", "clock", "has_family_carrier_embedding", "summaries"]
TEXTS = ["bound_repr", "bound_summary", "topology_repr", "topology_summary", "program_repr", "program_summary",
         "compiled_repr", "accumulator_repr", "learned_repr", "scheduler_repr"]


@pytest.mark.parametrize("key", PLAIN)
def test_same_projection_and_program(runs, key):
    theirs, ours = runs
    if key == "summaries":
        assert ours[key].keys() == theirs[key].keys()
        for r in ours[key]:
            for kind in ours[key][r]:
                assert ours[key][r][kind] == pytest.approx(theirs[key][r][kind])
        return
    assert ours[key] == theirs[key]


def test_semantic_texts_keep_double_underscores(runs):
    _, ours = runs
    assert ours["semantic"]["agents[0].belief__mean"] == "agents 0 / belief  mean"
    assert "markets / yield curves  five year" in ours["embedded_texts"]


@pytest.mark.parametrize("key", TEXTS)
def test_same_repr_and_summary_text(runs, key):
    theirs, ours = runs
    assert ours[key] == theirs[key]


def test_same_attention_mask(runs):
    theirs, ours = runs
    assert torch.equal(ours["mask"].float(), theirs["mask"].float())


@pytest.mark.parametrize("key", ["canvas", "learned", "head", "conditioner"])
def test_checkpoints_load_both_ways(runs, key):
    theirs, ours = runs
    a, b = theirs[key], ours[key]
    sa, sb = a.state_dict(), b.state_dict()
    assert {k: tuple(v.shape) for k, v in sa.items()} == {k: tuple(v.shape) for k, v in sb.items()}
    b.load_state_dict(sa)  # canvas-engineering -> canvas-core, strict
    for k, v in b.state_dict().items():
        if k.endswith("pos_enc.pe"):  # computed here from the same formula (not a trained value)
            torch.testing.assert_close(v, sa[k], rtol=0, atol=1e-6)
        else:
            assert torch.equal(v, sa[k]), k
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
    a.load_state_dict(b.state_dict())  # canvas-core -> canvas-engineering, strict
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
