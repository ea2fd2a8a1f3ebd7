"""Regressions found by the external audit of the schema and program layers: bad input raises a
CanvasError naming the object, and compiled programs follow canvas-engineering's region order and
coarse-region periods."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import canvas_core as cc
from canvas_core.errors import (
    CanvasError, CanvasTypeError, ProgramError, RegionError, SchemaError, SchemaFormatError, TopologyError,
)

F = cc.Field


def _layout():
    return cc.CanvasLayout(T=2, H=2, W=2, d_model=4, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})


# --- program layer: order and coarse periods -----------------------------------------------------
def _tree(Fld):
    @dataclass
    class Leaf:
        x: Fld = Fld(2, 2, period=4)
        y: Fld = Fld(1, 2, period=1)

    @dataclass
    class Mid:
        a: Fld = Fld(1, 1, period=3)
        inner: Leaf = field(default_factory=Leaf)

    @dataclass
    class Root:
        items: List[Mid] = field(default_factory=lambda: [Mid(), Mid()])   # list declared first
        single: Leaf = field(default_factory=Leaf)
        top: Fld = Fld(1, 1)

    return Root()


def test_nested_objects_come_before_lists_and_coarse_period_is_the_weighted_mean():
    bound = cc.compile_schema(_tree(F), T=2)
    assert bound.field_names == [
        "top", "single", "single.x", "single.y",
        "items[0]", "items[0].a", "items[0].inner", "items[0].inner.x", "items[0].inner.y",
        "items[1]", "items[1].a", "items[1].inner", "items[1].inner.x", "items[1].inner.y",
    ]
    periods = {n: s.period for n, s in bound.layout.regions.items()}
    # Leaf: (4 * 4 + 1 * 2) / (4 + 2) = 3
    assert periods["single"] == 3 and periods["items[0].inner"] == 3
    # Mid: a (w 1, p 3), inner coarse (w 1, p 3), x (w 4, p 4), y (w 2, p 1): 3+3+16+2 / 8 = 3
    assert periods["items[0]"] == 3
    assert periods["top"] == 1


def test_explicit_coarse_period_is_kept():
    @dataclass
    class Leaf:
        x: F = F(2, 2, period=4)

    @dataclass
    class Root:
        leaf: Leaf = field(default_factory=Leaf, metadata={"coarse": F(1, 1, period=2)})
        top: F = F(1, 1)

    bound = cc.compile_schema(Root(), T=2)
    assert bound.layout.regions["leaf"].period == 2


def test_region_order_and_coarse_periods_match_canvas_engineering():
    ce = pytest.importorskip("canvas_engineering")
    b1 = cc.compile_schema(_tree(cc.Field), T=2, spatial_shape=(16, 16), layout_strategy="packed")
    b2 = ce.compile_schema(_tree(ce.Field), T=2, spatial_shape=(16, 16), layout_strategy="packed")
    assert b1.field_names == b2.field_names
    assert {n: s.period for n, s in b1.layout.regions.items()} == {
        n: b2.layout.region_spec(n).period for n in b2.field_names}
    assert {n: s.bounds for n, s in b1.layout.regions.items()} == {
        n: tuple(b2.layout.region_spec(n).bounds) for n in b2.field_names}
    c1 = [(c.src, c.dst) for c in b1.topology.connections]
    c2 = [(c.src, c.dst) for c in b2.topology.connections]
    assert c1 == c2


def test_layout_strategy_and_temporal_fill_values():
    assert cc.LayoutStrategy("PACKED") is cc.LayoutStrategy.PACKED
    assert cc.TemporalFill("Hold") is cc.TemporalFill.HOLD
    with pytest.raises(ProgramError, match="unknown layout_strategy 'fancy'"):
        cc.LayoutStrategy("fancy")
    with pytest.raises(SchemaError, match="Did you mean 'hold'"):
        cc.TemporalFill("hodl")


# --- schema layer: bad input ----------------------------------------------------------------------
@pytest.mark.parametrize("call, exc, needle", [
    (lambda L: L.region_indices_at_t("a", "x"), CanvasTypeError, "region 'a': frame t_abs"),
    (lambda L: L.region_indices_at_t("a", 1.5), CanvasTypeError, "region 'a'"),
    (lambda L: L.region_runs("a", None), CanvasTypeError, "region 'a'"),
    (lambda L: L.region_at(-1), SchemaError, "outside the canvas"),
    (lambda L: L.region_at(8), SchemaError, "outside the canvas"),
    (lambda L: L.loss_weight_mask("nodevice"), SchemaError, "'nodevice' is not a torch device"),
    (lambda L: cc.CanvasTopology.dense(None), CanvasTypeError, "list of region names"),
    (lambda L: cc.CanvasTopology.causal_chain(5), CanvasTypeError, "list of region names"),
    (lambda L: cc.CanvasTopology.hub_spoke(None, ["a"]), CanvasTypeError, "hub"),
    (lambda L: cc.CanvasTopology.hub_spoke("a", ["b"], "yes"), CanvasTypeError, "bidirectional"),
    (lambda L: cc.CanvasTopology.causal_temporal(["a"], "layout"), CanvasTypeError, "layout must be a CanvasLayout"),
    (lambda L: cc.CanvasTopology.causal_temporal(["a", "zz"], L), TopologyError, "'zz' is not in the layout"),
    (lambda L: cc.CanvasTopology([]).resolve_fn("a->b"), CanvasTypeError, "expects a Connection"),
    (lambda L: cc.CanvasTopology([cc.Connection("a", "b")]).resolve_fn(cc.Connection("a", "b"), 5), CanvasTypeError, "layout"),
    (lambda L: cc.CanvasTopology([cc.Connection("a", "b")]).attention_ops(5), CanvasTypeError, "layout"),
    (lambda L: cc.CanvasTopology([cc.Connection("a", "zz")]).attention_ops(L), TopologyError, "dst region 'zz'"),
    (lambda L: cc.CanvasTopology([cc.Connection("a", "b")]).validate("x"), CanvasTypeError, "layout"),
    (lambda L: cc.CanvasTopology([cc.Connection("a", "b")]).to_attention_mask(None), CanvasTypeError, "layout"),
    (lambda L: cc.CanvasTopology([cc.Connection("a", "b")]).to_block_mask(L, block_size=1.5), CanvasTypeError, "block_size"),
    (lambda L: cc.CanvasTopology([cc.Connection("a", "b")]).to_block_mask(L, block_size=0), SchemaError, "block_size"),
    (lambda L: cc.CanvasSchema(L, version=5), CanvasTypeError, "version"),
    (lambda L: cc.CanvasSchema(L, version=""), CanvasTypeError, "version"),
    (lambda L: cc.CanvasSchema(L, metadata={"x": float("nan")}), SchemaError, "metadata"),
    (lambda L: cc.CanvasSchema(L).compatible_regions(cc.CanvasSchema(L), threshold="x"), CanvasTypeError, "threshold"),
    (lambda L: cc.CanvasSchema(L).compatible_regions(cc.CanvasSchema(L), threshold=float("nan")), CanvasTypeError, "threshold"),
    (lambda L: cc.RegionSpec((0, 1), carrier="diffusiv"), RegionError, "Did you mean 'diffusive'"),
    (lambda L: cc.CanvasSchema.from_json(b"\xff\xfe{}"), SchemaFormatError, "not UTF-8"),
    (lambda L: cc.CanvasProgram.from_json(b"\xff"), SchemaFormatError, "not UTF-8"),
    (lambda L: cc.CanvasSchema.from_json("5"), SchemaFormatError, "must be a JSON object"),
    (lambda L: cc.CanvasSchema.from_json("null"), SchemaFormatError, "must be a JSON object"),
])
def test_bad_schema_input_raises_a_canvas_error(call, exc, needle):
    with pytest.raises(exc, match=needle):
        call(_layout())


def test_region_at_and_valid_calls_still_work():
    L = _layout()
    assert L.region_at(0) == ["a"] and L.region_at(7) == ["b"]
    import numpy as np

    assert L.region_indices_at_t("a", np.int64(1)) == L.region_indices_at_t("a", 1)
    ops = cc.CanvasTopology([cc.Connection("a", "b")]).attention_ops(L)
    assert ops == [("a", "b", 1.0, "cross_attention")]
    assert cc.CanvasTopology.causal_temporal(["a", "b"], L).connections


def test_transfer_distance_of_huge_embeddings_does_not_overflow():
    a = cc.RegionSpec((0, 1), semantic_embedding=(1e300, 1e300))
    b = cc.RegionSpec((0, 1), semantic_embedding=(1e300, -1e300))
    c = cc.RegionSpec((0, 1), semantic_embedding=(2.0, 2.0))
    assert cc.transfer_distance(a, b) == pytest.approx(1.0)
    assert cc.transfer_distance(a, c) == pytest.approx(0.0, abs=1e-12)


def test_region_spec_carriers_are_the_program_carriers():
    from canvas_core.program.constants import CARRIERS

    for carrier in CARRIERS:
        assert cc.RegionSpec((0, 1), carrier=carrier).carrier == carrier


# --- JSON: nothing but CanvasError escapes ----------------------------------------------------------
_GOOD = cc.CanvasSchema(_layout(), cc.CanvasTopology.causal_temporal(["a", "b"])).to_json()


@settings(max_examples=150, deadline=None)
@given(st.one_of(
    st.binary(max_size=64),
    st.integers(0, len(_GOOD)).map(lambda k: _GOOD[:k]),
    st.tuples(st.integers(0, len(_GOOD) - 1), st.text(max_size=3)).map(lambda p: _GOOD[:p[0]] + p[1] + _GOOD[p[0] + 1:]),
))
def test_garbage_json_only_raises_canvas_errors(data):
    for load in (cc.CanvasSchema.from_json, cc.CanvasProgram.from_json):
        if isinstance(data, str) and not data.lstrip().startswith(("{", "[")):
            data = "{" + data  # keep it JSON-like so that it is never read as a file path
        try:
            load(data)
        except CanvasError:
            pass


@settings(max_examples=60, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                    max_leaves=12),
       st.sampled_from(["layout", "regions", "topology", "metadata", "schema_version", "extra"]))
def test_wrong_values_in_schema_dicts_only_raise_canvas_errors(value, key):
    d = json.loads(_GOOD)
    d[key] = value
    try:
        cc.CanvasSchema.from_dict(d)
    except CanvasError:
        pass
