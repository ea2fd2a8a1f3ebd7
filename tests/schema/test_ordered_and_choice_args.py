"""Arguments that take a string choice or an ordered sequence refuse other containers with a
CanvasError naming the argument.

``Connection(write_mode=["add"])`` raised a bare ``TypeError`` (unhashable list) and
``MaskSpec(kind=<array>)`` a ``ValueError``; ``RegionSpec(bounds={3, 0})``,
``Field(spatial_shape=<set>)``, ``CanvasLayout(spatial_shape=<set>)`` and sets of connections or
region names were accepted in whatever order the set happened to iterate; a dict gave its keys.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_core.errors import CanvasError, CanvasTypeError, SchemaError
from canvas_core.program import (ClockSpec, ConnectionProgram, ConnectivityPolicy, ConstraintSpec, Field,
                                 IdentitySpec, LearningSpec, RegionProgram)
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection, RegionSpec
from canvas_core.schema.masks import MaskSpec

torch.set_num_threads(1)

BASE = {
    Connection: dict(src="a", dst="b"), RegionSpec: dict(bounds=(0, 1, 0, 1, 0, 1)), MaskSpec: {},
    CanvasLayout: dict(T=2, d_model=4, spatial_shape=(2, 2)), CanvasTopology: {}, Field: {},
    RegionProgram: {}, ConnectionProgram: {}, ClockSpec: {}, LearningSpec: {}, ConstraintSpec: {},
    IdentitySpec: {}, ConnectivityPolicy: {},
}
CASES = [(cls, p) for cls in BASE for p in inspect.signature(cls).parameters]

_scalars = st.one_of(st.integers(-3, 9), st.text(max_size=3), st.sampled_from(["add", "full", "state"]))
containers = st.one_of(
    st.lists(_scalars, max_size=4), st.lists(_scalars, max_size=4).map(tuple),
    st.frozensets(st.integers(0, 9), min_size=2, max_size=4).map(set),
    st.frozensets(st.text(min_size=1, max_size=3), min_size=2, max_size=4),
    st.dictionaries(st.integers(0, 9), st.integers(0, 9), min_size=1, max_size=3),
    st.dictionaries(st.text(max_size=3), _scalars, min_size=1, max_size=3),
    st.lists(st.lists(st.integers(0, 1), min_size=1, max_size=2), min_size=1, max_size=2),
    st.integers(1, 3).map(lambda n: np.zeros((n, 2))), st.just(object()),
)


@pytest.mark.parametrize("cls, param", CASES, ids=[f"{c.__name__}.{p}" for c, p in CASES])
@settings(max_examples=30, deadline=None)
@given(value=containers)
def test_a_container_for_any_argument_raises_only_canvas_errors(cls, param, value):
    try:
        cls(**{**BASE[cls], param: value})
    except CanvasError:
        pass


def _unordered(elements):
    """A set or frozenset of at least two entries, or a dict: nothing with an order to keep."""
    sets = st.frozensets(elements, min_size=2, max_size=5)
    return st.one_of(sets.map(set), sets, st.dictionaries(elements, elements, min_size=1, max_size=4))


ORDERED = [
    ("RegionSpec bounds", lambda v: RegionSpec(bounds=v), st.integers(0, 5)),
    ("RegionSpec semantic_embedding",
     lambda v: RegionSpec(bounds=(0, 1), semantic_embedding=v), st.floats(-1, 1, allow_nan=False)),
    ("CanvasLayout spatial_shape", lambda v: CanvasLayout(T=1, d_model=4, spatial_shape=v), st.integers(1, 4)),
    ("spatial_shape", lambda v: Field(spatial_shape=v), st.integers(1, 4)),
    ("tags", lambda v: Field(tags=v), st.text(min_size=1, max_size=4)),
    ("CanvasTopology connections", lambda v: CanvasTopology(connections=v),
     st.sampled_from([Connection("a", "b"), Connection("b", "a"), Connection("a", "a", weight=2.0)])),
    ("CanvasTopology.causal_chain regions", lambda v: CanvasTopology.causal_chain(v), st.text(min_size=1, max_size=3)),
    ("CanvasTopology.dense regions", lambda v: CanvasTopology.dense(v), st.text(min_size=1, max_size=3)),
    ("CanvasTopology.isolated regions", lambda v: CanvasTopology.isolated(v), st.text(min_size=1, max_size=3)),
    ("CanvasTopology.hub_spoke spokes", lambda v: CanvasTopology.hub_spoke("h", v), st.text(min_size=1, max_size=3)),
    ("CanvasTopology.causal_temporal regions",
     lambda v: CanvasTopology.causal_temporal(v), st.text(min_size=1, max_size=3)),
]


@pytest.mark.parametrize("what, build, elements", ORDERED, ids=[w for w, _, _ in ORDERED])
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_an_unordered_collection_is_refused_where_order_matters(what, build, elements, data):
    value = data.draw(_unordered(elements))
    if isinstance(value, dict) and what.startswith("CanvasTopology.") and what != "CanvasTopology connections":
        return  # a dict of regions stands for its (ordered) names: CanvasTopology.dense(layout.regions)
    if isinstance(value, dict) and not value:
        return
    with pytest.raises(CanvasTypeError) as info:
        build(value)
    message = str(info.value)
    assert what in message and "ordered sequence" in message and "tuple or a list" in message, message


def test_ordered_forms_of_the_same_values_are_accepted():
    assert RegionSpec(bounds=[0, 3]).bounds == (0, 3)
    assert RegionSpec(bounds=(0, 1), semantic_embedding=np.array([0.5, 0.25])).semantic_embedding == (0.5, 0.25)
    assert CanvasLayout(T=1, d_model=4, spatial_shape=[2, 3]).spatial_shape == (2, 3)
    assert Field(spatial_shape=[2, 3]).shape == (2, 3) and Field(tags=["x", "y"]).tags == ("x", "y")
    layout = CanvasLayout(T=1, H=1, W=2, d_model=4, regions={"b": (0, 1, 0, 1, 0, 1), "a": (0, 1, 0, 1, 1, 2)})
    for names in (layout.regions, layout.regions.keys(), layout.region_names, iter(["b", "a"])):
        assert [c.src for c in CanvasTopology.causal_chain(names).connections][:2] == ["b", "a"]
    assert len(CanvasTopology(connections=(Connection("a", "b") for _ in range(2))).connections) == 2


CHOICES = [
    (lambda v: Connection("a", "b", write_mode=v), "write_mode", CanvasTypeError),
    (lambda v: Connection("a", "b", operator=v), "operator", CanvasTypeError),
    (lambda v: Connection("a", "b", fn=v), "fn", CanvasTypeError),
    (lambda v: Connection("a", "b", temporal_fill=v), "temporal_fill", CanvasError),
    (lambda v: RegionSpec(bounds=(0, 1), carrier=v), "carrier", CanvasTypeError),
    (lambda v: RegionSpec(bounds=(0, 1), default_attn=v), "default_attn", CanvasTypeError),
    (lambda v: RegionSpec(bounds=(0, 1), embedding_model=v), "embedding_model", CanvasTypeError),
    (lambda v: RegionSpec(bounds=(0, 1), family=v), "family", CanvasTypeError),
    (lambda v: MaskSpec(kind=v), "kind", SchemaError),
    (lambda v: Field(attn=v), "attn", CanvasTypeError),
    (lambda v: Field(carrier=v), "carrier", CanvasTypeError),
    (lambda v: Field(compile_mode=v), "compile_mode", CanvasTypeError),
]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(CHOICES), st.one_of(
    st.lists(st.sampled_from(["add", "gate", "full", "hold", "attend", "memory"]), min_size=1, max_size=3),
    st.frozensets(st.sampled_from(["add", "gate", "full", "hold"]), min_size=1),
    st.dictionaries(st.sampled_from(["add", "full", "hold"]), st.integers(), min_size=1),
    st.integers(1, 3).map(lambda n: np.array(["add"] * n)), st.integers(1, 3).map(lambda n: np.zeros(n + 1)),
))
def test_a_string_choice_refuses_a_container_naming_the_argument(case, value):
    build, what, error = case
    with pytest.raises(error, match=what):
        build(value)


def test_write_mode_as_a_list_names_the_connection_and_the_choices():
    with pytest.raises(CanvasTypeError, match=r"Connection\('a' -> 'b'\): write_mode must be one of "
                                              r"\['add', 'gate', 'replace'\] \(a single string\), got \['add'\]"):
        Connection("a", "b", write_mode=["add"])
    assert Connection("a", "b", write_mode="gate").write_mode == "gate"


def test_mask_pattern_entries_must_be_scalars():
    with pytest.raises(SchemaError, match="pattern entries must be 0/1"):
        MaskSpec(kind="sparse", pattern=[[np.zeros(2), 1]])
    with pytest.raises(SchemaError, match="pattern entries must be 0/1"):
        MaskSpec(kind="sparse", pattern=[[torch.ones(2), 1]])
    assert MaskSpec(kind="sparse", pattern=[list(np.array([True, False])), [np.int64(0), 1.0]]).pattern == ((1, 0), (0, 1))
