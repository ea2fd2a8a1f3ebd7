"""repr / summary texts equal canvas-engineering 0.5.0's for the same objects (scripts read
the counts and markers in them). Skipped when canvas-engineering is not installed."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import pytest

torch = pytest.importorskip("torch")
ce = pytest.importorskip("canvas_engineering")

import canvas_core as cc  # noqa: E402


def _texts(P):
    m = lambda s: importlib.import_module(f"{P.__name__}.{s}")  # noqa: E731

    @dataclass
    class R:
        camera: P.Field = P.Field(3, 3, family="observation")
        belief: P.Field = P.Field(2, 2, family="state", carrier="filter")
        action: P.Field = P.Field(1, 2, family="action")

    b, p = P.compile_program(R(), T=3, connectivity=P.ConnectivityPolicy(temporal="causal"))
    prog = m("program")
    p2 = prog.CanvasProgram(
        schema=p.schema,
        regions={"camera": prog.RegionProgram(family="observation", compile_mode="freeze", clock=prog.ClockSpec(period=2))},
        connections={("camera", "belief"): prog.ConnectionProgram(operator="observe")})
    compiled = m("compiler").ProgramCompiler(p2).compile()
    top = P.CanvasTopology(connections=[P.Connection("camera", "belief", weight=2.0),
                                        P.Connection("belief", "camera", fn="linear_attention"),
                                        P.Connection("action", "camera", t_src=0, t_dst=-1,
                                                     temporal_fill=P.TemporalFill.DROP)])
    reg = P.CortexRegistry()
    reg.register(P.CortexSpec("motor", bounds=(0, 4, 0, 4, 0, 4)))
    reg.register(P.CortexSpec("vision", bounds=(0, 4, 0, 4, 0, 4)))
    reg.assign("arm", "motor")
    return {
        "topology repr": repr(p.schema.topology), "topology summary": p.schema.topology.summary(),
        "small topology summary": top.summary(), "program repr": repr(p2), "program summary": p2.summary(),
        "bound repr": repr(b), "bound summary": b.summary(), "bound field repr": repr(b["camera"]),
        "compiler repr": repr(m("compiler").ProgramCompiler(p2)), "compiled repr": repr(compiled),
        "compiled summary": compiled.summary(),
        "accumulator repr": repr(m("residuals").ResidualAccumulator(["belief"])),
        "scheduler repr": repr(m("scheduling").RegionScheduler(p2)),
        "learned scheduler repr": repr(m("scheduling").LearnedScheduler(3, 4, max_active=2)),
        "sharpening repr": repr(m("sharpening").SharpeningSchedule(max_loops=3)),
        "dispatcher repr": repr(m("dispatch").AttentionDispatcher(top, b.layout, d_model=64)),
        "cortex repr": repr(reg), "cortex summary": reg.summary(),
        "semantic conditioner repr": repr(m("semantic").SemanticConditioner(
            d_model=8, embed_dim=3, region_embeddings={"a": [1.0, 0.0, 0.5], "b": [0.0, 1.0, 0.2]})),
        "family carrier embedding repr": repr(P.FamilyCarrierEmbedding(8)),
        "action head repr": repr(P.ActionHead(4, 3)),
    }


@pytest.fixture(scope="module")
def texts():
    return _texts(ce), _texts(cc)


@pytest.mark.parametrize("key", [
    "topology repr", "topology summary", "small topology summary", "program repr", "program summary",
    "bound repr", "bound summary", "bound field repr", "compiler repr", "compiled repr", "compiled summary",
    "accumulator repr", "scheduler repr", "learned scheduler repr", "sharpening repr", "dispatcher repr",
    "cortex repr", "cortex summary", "semantic conditioner repr", "family carrier embedding repr",
    "action head repr"])
def test_same_text(texts, key):
    theirs, ours = texts
    assert ours[key] == theirs[key]


def test_detail_adds_lines_after_canvas_engineerings_text():
    top = cc.CanvasTopology(connections=[cc.Connection("a", "b", t_src=0, t_dst=-1, operator="observe")])
    assert top.summary(detail=True).startswith(top.summary() + "\n")
    assert "t_src=0, t_dst=-1, fill=hold; observe" in top.summary(detail=True)
