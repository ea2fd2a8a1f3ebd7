"""Reliability: bad inputs to the canvas runtime (canvas, heads, scheduling, residuals)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from canvas_core.errors import CanvasError, CanvasTypeError, ShapeError, UnknownRegionError
from canvas_core.program import ClockSpec, Field, compile_program
from canvas_core.runtime.canvas import FamilyCarrierEmbedding, PeriodEmbedding, SpatiotemporalCanvas
from canvas_core.runtime.heads import ActionHead
from canvas_core.runtime.residuals import ResidualAccumulator
from canvas_core.runtime.scheduling import LearnedScheduler, RegionScheduler
from canvas_core.schema import CanvasLayout, RegionSpec


def _layout():
    return CanvasLayout(T=2, d_model=8, spatial_shape=(2, 2),
                        regions={"a": RegionSpec((0, 2, 0, 1, 0, 2)), "b": RegionSpec((0, 1, 1, 2, 0, 2))})


@dataclasses.dataclass
class _Prog:
    a: Field = dataclasses.field(default_factory=lambda: Field(1, 1, clock=ClockSpec(
        mode="on_event", event_source="a.prediction", event_threshold=0.1)))
    b: Field = dataclasses.field(default_factory=lambda: Field(1, 1))


@pytest.mark.parametrize("layout", [None, {"T": 1}, "layout", 3])
def test_canvas_needs_a_layout(layout):
    with pytest.raises(CanvasTypeError, match="layout must be a CanvasLayout"):
        SpatiotemporalCanvas(layout)


@pytest.mark.parametrize("kw, match", [
    ({"program": 3}, "program must be a CanvasProgram"),
    ({"program": "x"}, "program must be a CanvasProgram"),
    ({"semantic_conditioner": 3}, "get_conditioning"),
])
def test_canvas_bad_program_or_conditioner(kw, match):
    with pytest.raises(CanvasTypeError, match=match):
        SpatiotemporalCanvas(_layout(), **kw)


def test_canvas_program_of_another_layout_is_refused():
    _, prog = compile_program(_Prog())  # regions 'a', 'b'
    lay = CanvasLayout(T=1, d_model=8, spatial_shape=(2,), regions={"a": RegionSpec((0, 1, 0, 1))})
    with pytest.raises(UnknownRegionError, match="'b'"):
        SpatiotemporalCanvas(lay, program=prog)


def test_place_refuses_integer_and_misplaced_tensors_and_keeps_the_canvas():
    c = SpatiotemporalCanvas(_layout())
    cv = c.create_empty(2)
    before = cv.clone()
    with pytest.raises(ShapeError, match="region 'a' embeddings must be a floating"):
        c.place(cv, torch.zeros(2, 4, 8, dtype=torch.long), "a")
    with pytest.raises(ShapeError, match="device"):
        c.place(cv, torch.zeros(2, 4, 8, device="meta"), "a")
    with pytest.raises(ShapeError, match="floating"):
        c.place(torch.zeros(2, 8, 8, dtype=torch.long), torch.zeros(2, 4, 8), "a")
    assert torch.equal(cv, before)
    out = c.place(cv, torch.zeros(2, 4, 8), "a")  # valid input still works
    assert out.shape == cv.shape


@pytest.mark.parametrize("cls", [PeriodEmbedding, FamilyCarrierEmbedding])
@pytest.mark.parametrize("d", [0, -1, "8", 2.0])
def test_embeddings_validate_d_model(cls, d):
    with pytest.raises(CanvasTypeError, match="d_model"):
        cls(d)


def test_action_head_bad_inputs():
    h = ActionHead(8, 4)
    with pytest.raises(CanvasTypeError, match="torch.Tensor"):
        h([1.0] * 8)
    with pytest.raises(ShapeError, match="floating"):
        h(torch.zeros(2, 8, dtype=torch.long))


@pytest.mark.parametrize("program", [None, 3, "x", {"a": 1}])
def test_region_scheduler_needs_a_program(program):
    with pytest.raises(CanvasTypeError, match="CanvasProgram"):
        RegionScheduler(program)


def test_region_scheduler_bad_region_programs_and_clocks():
    class P:
        def __init__(self):
            self.regions = {"a": 3}

    with pytest.raises(CanvasTypeError, match=r"regions\['a'\] must be a RegionProgram"):
        RegionScheduler(P())
    _, prog = compile_program(_Prog())
    with pytest.raises(CanvasTypeError, match="clocks must be a mapping"):
        RegionScheduler(prog, clocks=[("a", ClockSpec())])


@pytest.mark.parametrize("summaries, match", [
    (3, "summaries must be None or a mapping"),
    ([1], "summaries must be None or a mapping"),
    ({"a": 3}, r"summaries\['a'\] must be a mapping"),
    ({"a": {"prediction": "high"}}, r"summaries\['a'\]\['prediction'\] must be a number"),
])
def test_region_scheduler_bad_summaries(summaries, match):
    _, prog = compile_program(_Prog())
    s = RegionScheduler(prog)
    with pytest.raises(CanvasTypeError, match=match):
        s.step(0, summaries=summaries)
    assert s.last_fired == {"a": -1, "b": -1}  # nothing recorded


def test_region_scheduler_bad_step_arguments():
    _, prog = compile_program(_Prog())
    s = RegionScheduler(prog)
    with pytest.raises(UnknownRegionError, match="'zz'"):
        s.fires("zz", 0)
    with pytest.raises(CanvasTypeError, match=">= 0"):
        s.step(-1)
    with pytest.raises(CanvasTypeError, match="boundary"):
        s.step(0, boundary=3)
    assert s.step(0, summaries={"a": {"prediction": 0.5}}) == {"a", "b"}


def test_learned_scheduler_bad_arguments():
    with pytest.raises(CanvasTypeError, match="temperature"):
        LearnedScheduler(2, 2, 1, temperature=float("inf"))
    ls = LearnedScheduler(2, 3, 1)
    with pytest.raises(CanvasTypeError, match="floating torch.Tensor"):
        ls([0.0, 1.0, 2.0])
    with pytest.raises(CanvasTypeError, match="sequence of strings"):
        ls.select(torch.zeros(3), "ab")


@pytest.mark.parametrize("names", [None, 3])
def test_residual_accumulator_bad_region_names(names):
    with pytest.raises(CanvasTypeError, match="region_names"):
        ResidualAccumulator(names)


def test_residual_accumulator_bad_spec_and_errors():
    with pytest.raises(CanvasTypeError, match="ResidualSpec"):
        ResidualAccumulator(["a"], spec="max")
    ra = ResidualAccumulator(["a"])
    for bad in ("high", None, [[1.0], [1.0, 2.0]], torch.ones(2, dtype=torch.complex64)):
        with pytest.raises(CanvasError, match="region 'a'"):
            ra.update("a", bad)
    assert ra.step_counts.tolist() == [0]  # nothing blended in
    ra.update("a", torch.tensor([1.0, 3.0]))
    assert ra.step_counts.tolist() == [1]


def test_a_type_whose_factory_cannot_load_is_refused_naming_its_connections():
    """A misspelt lazy factory fails when the layer builds the type's module: the error keeps its
    class and the registry's account (type, factory, provider) and names the connections."""
    import canvas_core.plugins as P
    from canvas_core.compiler import ProgramCompiler
    from canvas_core.errors import PluginLoadError
    from canvas_core.plugins import PluginHost, use_host
    from canvas_core.runtime.canvas_attention import CanvasAttention
    from canvas_core.schema import CanvasSchema, CanvasTopology, Connection

    with use_host(PluginHost(entry_points=lambda: [])):
        P.register_attention("typo_type", "canvas_core.atention:CrossAttention")
        topology = CanvasTopology(connections=[Connection(src="a", dst="a"),
                                               Connection(src="a", dst="b", fn="typo_type")])
        with pytest.raises(PluginLoadError) as ei:  # resolution (compile) already refuses the broken factory
            ProgramCompiler(CanvasSchema(layout=_layout(), topology=topology)).compile(device="cpu")
        with pytest.raises(PluginLoadError) as ei:
            CanvasAttention(topology, _layout(), d_model=8, n_heads=2)
    msg = str(ei.value)
    assert msg.startswith("connection #1 'a' -> 'b' (fn 'typo_type'): ")
    assert "canvas_core.atention:CrossAttention" in msg and "failed to load" in msg
    assert isinstance(ei.value.__cause__, PluginLoadError)
