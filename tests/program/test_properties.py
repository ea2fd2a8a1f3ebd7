"""Property tests: random dataclass trees of Fields -> compile -> layout valid, sizes right,
names and operators as a reference walk predicts, JSON round trip exact."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass as dataclass_, field, make_dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_core.errors import CanvasError
from canvas_core.program import (
    CanvasProgram, ConnectivityPolicy, Field, LayoutStrategy, compile_program,
)

FAMILIES = [None, "observation", "state", "memory", "residual", "action"]
TABLE = {
    ("observation", "state"): "observe", ("state", "observation"): "predict",
    ("state", "state"): "integrate", ("state", "memory"): "write", ("memory", "state"): "retrieve",
    ("state", "action"): "act", ("action", "state"): "intervene", ("state", "residual"): "emit_residual",
    ("observation", "residual"): "emit_residual",
}


@st.composite
def fields_(draw, ndim):
    if ndim == 2:
        shape = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        f = lambda **k: Field(*shape, **k)  # noqa: E731
    else:
        shape = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
        f = lambda **k: Field(spatial_shape=shape, **k)  # noqa: E731
    kw = dict(period=draw(st.integers(1, 3)), family=draw(st.sampled_from(FAMILIES)),
              temporal_extent=draw(st.one_of(st.none(), st.integers(1, 2))),
              loss_weight=draw(st.sampled_from([0.0, 1.0, 2.5])))
    return f(**kw)


_counter = itertools.count()


@st.composite
def trees(draw, ndim, depth=0):
    """(instance, expected region names in order, {name: Field})"""
    leaves = draw(st.lists(fields_(ndim), min_size=1, max_size=3))
    spec = [(f"f{i}", Field, field(default=f)) for i, f in enumerate(leaves)]
    names = [f"f{i}" for i in range(len(leaves))]
    fmap = {f"f{i}": f for i, f in enumerate(leaves)}
    children = []
    if depth < 2:
        for j in range(draw(st.integers(0, 2))):
            sub, sub_names, sub_map = draw(trees(ndim, depth + 1))
            if draw(st.booleans()):
                n = draw(st.integers(1, 2))
                elems = [sub] * n  # one instance repeated: a list of identical elements
                spec.append((f"c{j}", list, field(default_factory=lambda e=elems: list(e))))
                for k in range(n):
                    p = f"c{j}[{k}]"
                    children.append((p, [f"{p}.{s}" for s in sub_names], {f"{p}.{s}": v for s, v in sub_map.items()}))
            else:
                spec.append((f"c{j}", type(sub), field(default_factory=lambda s=sub: s)))
                p = f"c{j}"
                children.append((p, [f"{p}.{s}" for s in sub_names], {f"{p}.{s}": v for s, v in sub_map.items()}))
    cls = make_dataclass(f"T{next(_counter)}", spec)
    order = list(names)
    # nested objects first, then list elements (canvas-engineering's order)
    children.sort(key=lambda c: "[" in c[0])
    for p, sub_names, sub_map in children:
        order += [p] + sub_names
        # coarse period: mean period of everything below, weighted by h * w, rounded
        below = list(sub_map.values())
        mean = sum(f.period * f.h * f.w for f in below) / sum(f.h * f.w for f in below)
        fmap[p] = Field(spatial_shape=(1,), period=max(1, round(mean)))
        fmap.update(sub_map)
    return cls(), order, fmap


def _expected_op(fa, fb, ts, td):
    if fa is None or fb is None:
        return "attend"
    return TABLE.get((fa, fb), "attend")  # canvas-engineering's table, whatever the frame offsets


@settings(max_examples=40, deadline=None)
@given(data=st.data(), ndim=st.sampled_from([1, 2, 2, 3]), T=st.integers(2, 4),
       temporal=st.sampled_from(["dense", "causal", "same_frame"]),
       strategy=st.sampled_from(list(LayoutStrategy)), packing=st.sampled_from(["compatible", "tight"]))
def test_random_trees_compile_to_valid_programs(data, ndim, T, temporal, strategy, packing):
    root, order, fmap = data.draw(trees(ndim))
    bound, prog = compile_program(root, T=T, d_model=8, layout_strategy=strategy,
                                  connectivity=ConnectivityPolicy(temporal=temporal), packing=packing)
    lay = bound.layout
    assert bound.field_names == order
    # canvas-engineering's coarse region is 1 x 1, so with nested objects a 1-d canvas becomes 2-d
    nested = any(not n.rsplit(".", 1)[-1].startswith("f") for n in order)
    assert lay.n_spatial_dims == (max(ndim, 2) if packing == "compatible" and nested else ndim)
    # sizes: prod(shape) * frames spanned
    for name in order:
        f = fmap[name]
        frames = T if f.temporal_extent is None else f.temporal_extent
        assert lay.region_numel(name) == math.prod(f.shape) * frames
        assert lay.regions[name].period == f.period
        assert lay.regions[name].family == f.family
    # no two regions share a position (checked independently of CanvasLayout's own check)
    seen = {}
    for name in order:
        for i in lay.region_indices(name):
            assert i not in seen, (name, seen.get(i))
            seen[i] = name
    # operators follow the documented rule
    for c in prog.schema.topology.connections:
        assert c.operator == _expected_op(fmap[c.src].family, fmap[c.dst].family, c.t_src, c.t_dst)
        assert (c.t_src, c.t_dst) in ({"dense": [(None, None)], "same_frame": [(0, 0)],
                                       "causal": [(0, 0), (0, -1)]}[temporal])
    # every region has a program; JSON round trip exact
    assert set(prog.regions) == set(order)
    assert CanvasProgram.from_json(prog.to_json()) == prog


@settings(max_examples=30, deadline=None)
@given(data=st.data(), W=st.integers(1, 8), H=st.integers(1, 8))
def test_explicit_canvas_either_fits_or_raises_program_error(data, W, H):
    root, order, fmap = data.draw(trees(2))
    try:
        bound = compile_program(root, T=2, spatial_shape=(H, W))[0]
    except CanvasError as exc:
        assert "canvas" in str(exc)
        return
    lay = bound.layout
    assert lay.spatial_shape == (H, W)
    assert sum(lay.region_numel(n) for n in order) <= lay.num_positions


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from(["h", "w", "period", "temporal_extent", "loss_weight", "family",
                                        "carrier", "compile_mode", "tags", "attn"]),
                       st.one_of(st.integers(-2, 3), st.text(max_size=6), st.none(), st.floats(allow_nan=True),
                                 st.tuples(st.text(max_size=3)))))
def test_field_construction_raises_only_canvas_errors(kw):
    try:
        f = Field(**kw)
    except CanvasError:
        return
    assert f.h >= 1 and f.w >= 1 and f.period >= 1


_junk = st.one_of(st.none(), st.integers(-3, 20), st.text(max_size=4), st.floats(allow_nan=True),
                  st.tuples(st.integers(-1, 9), st.integers(-1, 9)), st.lists(st.integers(0, 3), max_size=3))


@settings(max_examples=50, deadline=None)
@given(T=_junk, d_model=_junk, spatial_shape=_junk, t_current=_junk,
       strategy=st.one_of(_junk, st.sampled_from(["packed", "interleaved"])),
       policy=st.one_of(st.none(), st.builds(dict, intra=st.sampled_from(["dense", "star", "bogus"]))))
def test_compile_with_junk_arguments_raises_only_canvas_errors(T, d_model, spatial_shape, t_current,
                                                              strategy, policy):
    @dataclass_
    class R:
        a: Field = Field(2, 3, family="observation")
        b: Field = Field(1, 1, family="state")

    try:
        conn = ConnectivityPolicy(**policy) if policy is not None else None
        compile_program(R(), T=T, d_model=d_model, spatial_shape=spatial_shape, t_current=t_current,
                        layout_strategy=strategy, connectivity=conn)
    except CanvasError:
        pass
