"""SpatiotemporalCanvas and its embeddings."""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch

from canvas_core.errors import CanvasError, ShapeError, UnknownRegionError
from canvas_core.runtime.canvas import (
    FamilyCarrierEmbedding,
    PeriodEmbedding,
    SinusoidalPositionalEncoding3D,
    SinusoidalPositionalEncodingND,
    SpatiotemporalCanvas,
)
from canvas_core.schema import CanvasLayout, RegionSpec


def seed_layout():
    return CanvasLayout(
        T=5,
        H=8,
        W=8,
        d_model=256,
        regions={
            "visual": (0, 5, 0, 6, 0, 6),
            "action": RegionSpec(bounds=(0, 5, 6, 7, 0, 1), loss_weight=2.0),
            "reward": RegionSpec(bounds=(2, 3, 7, 8, 0, 1), period=5),
        },
        t_current=2,
    )


def _region_positions(layout, name):
    """Explicit loops over the region box: canonical flat index of each position, t-major."""
    b = layout.region_spec(name).bounds
    shape = layout.spatial_shape
    out = []
    for t in range(b[0], b[1]):
        for h in range(b[2], b[3]):
            for w in range(b[4], b[5]):
                out.append(t * shape[0] * shape[1] + h * shape[1] + w)
    return out


def test_seed_000_shapes():
    layout = seed_layout()
    c = SpatiotemporalCanvas(layout)
    x = c.create_empty(batch_size=4)
    assert x.shape == (4, 320, 256)
    assert c.extract(x, "visual").shape == (4, 180, 256)
    assert c.extract(x, "action").shape == (4, 5, 256)
    assert c.extract(x, "reward").shape == (4, 1, 256)


def test_place_extract_round_trip_against_index_loops():
    layout = seed_layout()
    c = SpatiotemporalCanvas(layout)
    x = c.create_empty(2)
    emb = torch.randn(2, 180, 256, requires_grad=True)
    y = c.place(x, emb, "visual")
    pos = _region_positions(layout, "visual")
    assert pos == layout.region_indices("visual")
    added = c.region_embedding("visual")
    for p in pos[::17]:
        k = pos.index(p)
        assert torch.allclose(y[:, p], emb[:, k] + added[k])
    others = sorted(set(range(320)) - set(pos))
    assert torch.equal(y[:, others], x[:, others])  # out-of-place, the rest untouched
    assert not torch.equal(x[:, pos], y[:, pos])
    assert torch.allclose(c.extract(y, "visual") - added, emb, atol=1e-6)
    y.sum().backward()
    assert torch.allclose(emb.grad, torch.ones_like(emb))


def test_embeddings_in_create_empty_and_place():
    layout = seed_layout()
    c = SpatiotemporalCanvas(layout)
    x = c.create_empty(1)[0]
    pe = c.pos_enc(5, (8, 8)).reshape(320, 256)
    p = layout.flat_index(2, 7, 0)  # the reward position (period 5)
    ident = c.period_embedding(5) + c.modality_embeddings["r2"]
    assert torch.allclose(x[p], c.empty_token + pe[p] + ident)
    uncovered = layout.flat_index(0, 7, 7)
    assert torch.allclose(x[uncovered], c.empty_token + pe[uncovered] + c.period_embedding(1))


def test_program_adds_family_carrier():
    from canvas_core.program import CanvasProgram, RegionProgram
    from canvas_core.schema import CanvasSchema, CanvasTopology

    layout = seed_layout()
    prog = CanvasProgram(
        schema=CanvasSchema(layout=layout, topology=CanvasTopology(connections=[])),
        regions={
            "visual": RegionProgram(family="observation"),
            "action": RegionProgram(family="action"),
        },
    )
    c = SpatiotemporalCanvas(layout, program=prog)
    ident = c.region_identity("visual")
    fc = c.family_carrier("observation", "deterministic")
    assert torch.allclose(ident, c.period_embedding(1) + c.modality_embeddings["r0"] + fc)


def test_canvas_errors():
    c = SpatiotemporalCanvas(seed_layout())
    x = c.create_empty(2)
    with pytest.raises(ShapeError, match=r"'visual'.*\(2, 180, 256\).*\(2, 10, 256\)"):
        c.place(x, torch.randn(2, 10, 256), "visual")
    with pytest.raises(UnknownRegionError, match="visual"):
        c.extract(x, "visuals")
    with pytest.raises(ShapeError):
        c.extract(torch.randn(2, 100, 256), "visual")


def test_sinusoidal_nd_against_formula():
    enc = SinusoidalPositionalEncodingND(10, max_T=4, max_spatial=(3, 5))
    pe = enc(3, (2, 4))
    assert pe.shape == (3, 2, 4, 10)
    dims = (3, 3, 4)  # 10 split over 3 axes, remainder on the last

    def one_d(pos, d):
        v = []
        for c in range(d):
            i = c - c % 2
            ang = pos / (10000 ** (i / d))
            v.append(math.sin(ang) if c % 2 == 0 else math.cos(ang))
        return v

    for t in range(3):
        for a in range(2):
            for b in range(4):
                ref = one_d(t, dims[0]) + one_d(a, dims[1]) + one_d(b, dims[2])
                assert torch.allclose(pe[t, a, b], torch.tensor(ref), atol=1e-5)
    pe3 = SinusoidalPositionalEncoding3D(10, 4, 3, 5)
    assert torch.allclose(pe3(3, 2, 4), pe)
    assert torch.allclose(pe3(3, spatial_shape=(2, 4)), pe)
    with pytest.raises(ShapeError):
        enc(5, (2, 4))


def test_period_embedding_buckets():
    p = PeriodEmbedding(8)
    # the documented table: canvas-engineering's, so that checkpoint rows mean the same periods
    assert [p.bucket(x) for x in (1, 2, 4, 16, 576, 4608)] == [0, 2, 3, 5, 11, 14]
    assert p.bucket(10**9) == 15
    assert torch.equal(p(4), p.embedding.weight[3])
    with pytest.warns(UserWarning, match="period 0 is read as period 1"):
        assert p.bucket(0) == 0  # canvas-engineering's edge case, accepted with a warning
    with pytest.raises(CanvasError):
        p.bucket(-1)
    ce = pytest.importorskip("canvas_engineering")
    theirs = ce.PeriodEmbedding(d_model=8)
    assert [p.bucket(x) for x in range(1, 20001)] == [theirs.bucket(x) for x in range(1, 20001)]


def test_family_carrier_unknown_slot():
    f = FamilyCarrierEmbedding(8)
    assert f.family_idx("observation") == 0 and f.family_idx("custom") == 5 == f.family_idx("other")
    assert f.carrier_idx("residual") == 4 and f.carrier_idx("weird") == 5
    assert torch.allclose(f("custom", "weird"), f.family_emb.weight[5] + f.carrier_emb.weight[5])


def test_family_carrier_embedding_loads_canvas_engineering_and_old_state_dicts():
    from canvas_core.runtime.canvas import FamilyCarrierEmbedding

    f = FamilyCarrierEmbedding(8)
    assert set(f.state_dict()) == {"family_embedding.weight", "carrier_embedding.weight"}
    f.load_state_dict({"family_emb.weight": torch.ones(6, 8), "carrier_emb.weight": torch.zeros(6, 8)})
    assert torch.equal(f("memory", "filter"), torch.ones(8))
    ce = pytest.importorskip("canvas_engineering.canvas")
    theirs = ce.FamilyCarrierEmbedding(8)
    f.load_state_dict(theirs.state_dict())
    assert torch.equal(f("memory", "filter"), theirs("memory", "filter"))
    assert torch.equal(f("custom", "weird"), theirs("custom", "weird"))


def test_positional_encoding_rejects_non_integer_grids():
    from canvas_core.errors import CanvasError
    from canvas_core.runtime.canvas import SinusoidalPositionalEncoding3D, SinusoidalPositionalEncodingND

    pe = SinusoidalPositionalEncodingND(8, max_T=4, max_spatial=(3, 3))
    for T, shape in ((2, "ab"), (2.5, (1, 1)), (2, (1, None)), (True, (1, 1)), (2, 3)):
        with pytest.raises(CanvasError, match="SinusoidalPositionalEncodingND"):
            pe(T, shape)
    assert pe(np.int64(2), (np.int64(1), 3)).shape == (2, 1, 3, 8)
    with pytest.raises(CanvasError):
        SinusoidalPositionalEncoding3D(8, max_T=4)(2, "a", 2)


def test_canvas_loads_canvas_engineering_state_dicts():
    ce = pytest.importorskip("canvas_engineering")
    from canvas_core.program import CanvasProgram, RegionProgram
    from canvas_core.schema import CanvasSchema, CanvasTopology

    kw = dict(T=3, H=2, W=4, d_model=8, regions={"a": (0, 3, 0, 2, 0, 2), "b.x[0]": (0, 3, 0, 2, 2, 4)})
    theirs_layout = ce.CanvasLayout(**kw)
    theirs_prog = ce.CanvasProgram(schema=ce.CanvasSchema(layout=theirs_layout, topology=ce.CanvasTopology([])),
                                   regions={"a": ce.RegionProgram(family="action")})
    theirs = ce.SpatiotemporalCanvas(theirs_layout, program=theirs_prog)
    layout = CanvasLayout(**kw)
    prog = CanvasProgram(schema=CanvasSchema(layout=layout, topology=CanvasTopology(connections=[])),
                         regions={"a": RegionProgram(family="action")})
    ours = SpatiotemporalCanvas(layout, program=prog)
    result = ours.load_state_dict(theirs.state_dict())  # strict: every key maps
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(ours.modality_embeddings["r1"], theirs.modality_embeddings["b__x_0_"])
    assert torch.equal(ours.empty_token, theirs.empty_token)
    assert torch.equal(ours.family_carrier("action", "deterministic"),
                       theirs.family_carrier_embedding("action", "deterministic"))
    # the positional table canvas-engineering stores is the one ours computes
    torch.testing.assert_close(ours.pos_enc(3, (2, 4)), theirs.pos_enc.pe[:3, :2, :4])
    # and our own state dicts still round-trip
    again = SpatiotemporalCanvas(layout, program=prog)
    again.load_state_dict(ours.state_dict())
    assert torch.equal(again.modality_embeddings["r0"], ours.modality_embeddings["r0"])


def test_create_empty_compiles_one_graph_for_every_batch_size():
    """Its eager checks name the batch size in their messages; traced, that made the size a
    constant of the graph: one recompile per batch size even with dynamic=True (a world model
    compiled whole hit the recompile limit)."""
    from torch._dynamo.testing import CompileCounter

    from canvas_core import CanvasLayout, SpatiotemporalCanvas

    canvas = SpatiotemporalCanvas(CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"a": (0, 2, 0, 1, 0, 2)}))
    torch._dynamo.reset()
    counter = CompileCounter()
    make = torch.compile(lambda x: canvas.create_empty(x.shape[0]) + x.sum(), backend=counter, fullgraph=True,
                         dynamic=True)
    for B in (2, 3, 5, 7):
        got = make(torch.ones(B, 3))
        torch.testing.assert_close(got, canvas.create_empty(B) + 3.0 * B)
    assert counter.frame_count == 1
