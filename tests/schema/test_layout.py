"""CanvasLayout / RegionSpec: geometry, index maths against brute force, bad input."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_core import CanvasError
from canvas_core.errors import CanvasTypeError, RegionError, SchemaError, UnknownRegionError
from canvas_core.schema import CanvasLayout, RegionSpec

from .strategies import layouts


def brute_positions(layout: CanvasLayout, name: str):
    """Enumerate every grid point and keep those inside the region's box (t-major order)."""
    spec = layout.regions[name]
    dims = (layout.T, *layout.spatial_shape)
    out = []
    for flat, coords in enumerate(itertools.product(*(range(d) for d in dims))):
        if all(spec.bounds[2 * k] <= c < spec.bounds[2 * k + 1] for k, c in enumerate(coords)):
            out.append((flat, coords[0]))
    return out


def seed_layout() -> CanvasLayout:
    return CanvasLayout(
        T=5, H=8, W=8, d_model=256,
        regions={
            "visual": (0, 5, 0, 6, 0, 6),
            "action": RegionSpec(bounds=(0, 5, 6, 7, 0, 1), loss_weight=2.0),
            "reward": RegionSpec(bounds=(2, 3, 7, 8, 0, 1), period=5),
        },
        t_current=2,
    )


def test_seed_layout_sizes():
    layout = seed_layout()
    assert layout.num_positions == 320
    assert layout.spatial_shape == (8, 8) and (layout.H, layout.W) == (8, 8)
    assert layout.region_numel("visual") == 180  # "180 positions — video patches"
    assert layout.region_size("action") == (5, 1, 1)
    assert isinstance(layout.regions["visual"], RegionSpec)  # raw tuples are wrapped
    assert layout.region_spec("visual").period == 1 and layout.region_spec("reward").period == 5
    assert layout.region_timesteps("reward") == [2]


def test_seed_frame_mapping():
    layout = CanvasLayout(
        T=16, H=32, W=32, d_model=768,
        regions={
            "screen": (0, 16, 0, 24, 0, 24),
            "mouse": RegionSpec(bounds=(0, 16, 24, 26, 0, 4), period=1, loss_weight=2.0),
            "thought": RegionSpec(bounds=(0, 4, 28, 32, 0, 8), period=4, loss_weight=1.0),
            "task_prompt": RegionSpec(bounds=(0, 1, 26, 28, 0, 4), is_output=False),
        },
    )
    assert layout.real_frame("thought", canvas_t=2) == 8
    assert layout.canvas_frame("thought", real_t=8) == 2
    assert layout.canvas_frame("thought", real_t=7) is None
    assert layout.canvas_frame("thought", real_t=16) is None  # frame 4 is outside the region
    assert layout.region_numel("screen") == 9216
    w = layout.loss_weight_mask("cpu")
    assert tuple(w.shape) == (16 * 32 * 32,)
    assert float(w[layout.region_indices("mouse")].min()) == 2.0
    assert float(w[layout.region_indices("task_prompt")].max()) == 0.0
    assert float(w.sum()) == pytest.approx(9216 * 1 + 128 * 2 + 128 * 1)


def test_n_dimensional_grids():
    one_d = CanvasLayout(T=4, spatial_shape=(32,), d_model=64, regions={"tokens": (0, 4, 0, 32)})
    assert one_d.num_positions == 128 and one_d.region_numel("tokens") == 128
    three_d = CanvasLayout(T=2, spatial_shape=(4, 4, 4), d_model=8, regions={"vox": (0, 2, 1, 3, 0, 4, 2, 4)})
    assert three_d.region_numel("vox") == 2 * 2 * 4 * 2
    zero_d = CanvasLayout(T=3, d_model=8, regions={"scalar": (1, 3)})
    assert zero_d.num_positions == 3 and zero_d.region_indices("scalar") == [1, 2]


@settings(max_examples=60, deadline=None)
@given(layouts(max_dims=3))
def test_index_functions_match_brute_force(layout):
    for name in layout.regions:
        brute = brute_positions(layout, name)
        assert layout.region_indices(name) == [f for f, _ in brute]
        for t in range(-1, layout.T + 1):
            assert layout.region_indices_at_t(name, t) == [f for f, tt in brute if tt == t]
            runs = layout.region_runs(name, t)
            assert all(a < b for a, b in runs)
            assert all(runs[i][1] < runs[i + 1][0] for i in range(len(runs) - 1))  # maximal, sorted
        assert layout.region_numel(name) == len(brute)
        for flat, _ in brute[:5]:
            assert name in layout.region_at(flat)


@settings(max_examples=40, deadline=None)
@given(layouts(max_dims=2, allow_overlap=True))
def test_loss_weight_mask_matches_brute_force(layout):
    expected = [0.0] * layout.num_positions
    for name, spec in layout.regions.items():
        if spec.is_output:
            for flat, _ in brute_positions(layout, name):
                expected[flat] += spec.loss_weight
    got = layout.loss_weight_mask().tolist()
    assert got == pytest.approx(expected)


@settings(max_examples=40, deadline=None)
@given(layouts(max_dims=2), st.data())
def test_flat_index_is_row_major(layout, data):
    coords = [data.draw(st.integers(0, d - 1)) for d in (layout.T, *layout.spatial_shape)]
    dims = (layout.T, *layout.spatial_shape)
    expected = list(itertools.product(*(range(d) for d in dims))).index(tuple(coords))
    assert layout.flat_index(*coords) == expected


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(regions={"v": (0, 6, 0, 6, 0, 6)}), RegionError, ["'v'", "leave the canvas", "axis t"]),
        (dict(regions={"v": (0, 5, 0, 9, 0, 6)}), RegionError, ["'v'", "axis h"]),
        (dict(regions={"v": (0, 5, 4, 2, 0, 6)}), RegionError, ["'v'", "inverted"]),
        (dict(regions={"v": (0, 5, 3, 3, 0, 6)}), RegionError, ["'v'", "empty"]),
        (dict(regions={"v": (0, 5, 0, 6)}), RegionError, ["'v'", "spatial", "6 numbers"]),
        (dict(regions={"v": (0, 5, -1, 6, 0, 6)}), RegionError, ["'v'", "< 0"]),
        (dict(regions={"v": "0,5"}), CanvasTypeError, ["'v'", "RegionSpec"]),
        (dict(regions={"v": (0, 5, 0, 6.5, 0, 6)}), CanvasTypeError, ["'v'", "integers"]),
        (dict(regions={"v": RegionSpec(bounds=(0, 5, 0, 6, 0, 6))}, t_current=9), SchemaError, ["t_current"]),
        (dict(regions=[("v", (0, 1, 0, 1, 0, 1))]), CanvasTypeError, ["dict"]),
    ],
)
def test_bad_layouts_raise_clear_errors(kwargs, error, words):
    base = dict(T=5, H=8, W=8, d_model=16)
    with pytest.raises(error) as info:
        CanvasLayout(**{**base, **kwargs})
    assert isinstance(info.value, CanvasError)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(bounds=(0, 5, 0, 6, 0, 6), period=0), ["period", ">= 1"]),
        (dict(bounds=(0, 5, 0, 6, 0, 6), period=-2), ["period"]),
        (dict(bounds=(0, 5, 0, 6, 0, 6), period=1.5), ["period", "integer"]),
        (dict(bounds=(0, 5, 0, 6, 0, 6), loss_weight=-1.0), ["loss_weight", ">= 0"]),
        (dict(bounds=(0, 5, 0, 6, 0, 6), loss_weight=float("nan")), ["loss_weight", "finite"]),
        (dict(bounds=(0, 5, 0)), ["even length"]),
        (dict(bounds=5), ["tuple"]),
        (dict(bounds=(0, 5, 0, 6, 0, 6), is_output="yes"), ["is_output"]),
        (dict(bounds=(0, 5, 0, 6, 0, 6), semantic_embedding="abc"), ["semantic_embedding"]),
        (dict(bounds=(0, 5, 0, 6, 0, 6), default_attn=""), ["default_attn"]),
    ],
)
def test_bad_region_specs(kwargs, words):
    with pytest.raises(CanvasError) as info:
        RegionSpec(**kwargs)
    for w in words:
        assert w in str(info.value)


def test_unknown_region_lookup_suggests_closest():
    layout = seed_layout()
    with pytest.raises(UnknownRegionError) as info:
        layout.region_spec("visaul")
    msg = str(info.value)
    assert "visaul" in msg and "Did you mean 'visual'" in msg
    assert isinstance(info.value, KeyError.__mro__[1])  # a LookupError, like the KeyError it replaces


def test_h_w_and_spatial_shape_conflict():
    with pytest.raises(SchemaError, match="disagree"):
        CanvasLayout(T=1, H=2, W=2, spatial_shape=(3, 3), d_model=4)
    with pytest.raises(SchemaError, match="disagree"):
        CanvasLayout(T=1, H=2, spatial_shape=(3,), d_model=4)


def test_h_and_w_read_back_as_in_canvas_engineering():
    """H / W are the first two spatial sizes at any rank; a lone H or W leaves the other at 1;
    both forms given with the same sizes are accepted (``dataclasses.replace`` passes both)."""
    import dataclasses

    one = CanvasLayout(T=4, spatial_shape=(16,), d_model=32)
    assert (one.H, one.W) == (16, None)
    three = CanvasLayout(T=1, spatial_shape=(2, 3, 4), d_model=4)
    assert (three.H, three.W) == (2, 3)
    assert CanvasLayout(T=1, H=2, d_model=4).spatial_shape == (2, 1)
    assert CanvasLayout(T=1, W=5, d_model=4).spatial_shape == (1, 5)
    assert dataclasses.replace(one, T=2).spatial_shape == (16,)
    assert dataclasses.replace(three, T=2).spatial_shape == (2, 3, 4)
    ce = pytest.importorskip("canvas_engineering")
    for kw in (dict(spatial_shape=(16,)), dict(spatial_shape=(2, 3, 4)), dict(H=2), dict(W=5), dict(H=3, W=4)):
        a, b = CanvasLayout(T=1, d_model=4, **kw), ce.CanvasLayout(T=1, d_model=4, **kw)
        assert (a.spatial_shape, a.H, a.W) == (tuple(b.spatial_shape), b.H, b.W), kw


def test_schema_layer_never_imports_torch():
    code = (
        "import sys, canvas_core\n"
        "from canvas_core import CanvasLayout, CanvasSchema, CanvasTopology, Connection, RegionSpec\n"
        "l = CanvasLayout(T=2, H=2, W=2, d_model=4, regions={'a': (0, 2, 0, 1, 0, 2)})\n"
        "s = CanvasSchema(l, CanvasTopology([Connection('a', 'a')]))\n"
        "CanvasSchema.from_json(s.to_json()); l.region_indices('a')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
