"""Regressions found by the external audit of the schema layer: bad input raises a CanvasError
naming the object, and JSON input raises nothing else. (The program layer's part of the audit, region
order and coarse periods, is tests/program/test_audit_region_order.py.)"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import canvas_core as cc
from canvas_core.errors import (
    CanvasError, CanvasTypeError, RegionError, SchemaError, SchemaFormatError, TopologyError,
)


def _layout():
    return cc.CanvasLayout(T=2, H=2, W=2, d_model=4, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})


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
