"""SemanticConditioner: shapes and behaviour per the canvas-engineering docstrings."""

from __future__ import annotations

import pytest
import torch

from canvas_core.errors import CanvasTypeError, SchemaError, ShapeError, UnknownRegionError
from canvas_core.schema import CanvasLayout, RegionSpec
from canvas_core.semantic import SemanticConditioner

D, E = 6, 5


def _layout():
    # T=3, 2x2 grid: "video" covers row 0 at t in [0, 3), "joints" row 1 at t in [0, 2), the rest empty
    return CanvasLayout(T=3, d_model=D, spatial_shape=(2, 2), regions={
        "video": RegionSpec((0, 3, 0, 1, 0, 2)),
        "joints": (0, 2, 1, 2, 0, 2),
        "extra": (2, 3, 1, 2, 1, 2),
    })


def _embs(names=("video", "joints", "zzz_unused")):
    g = torch.Generator().manual_seed(0)
    return {n: torch.randn(E, generator=g) for n in names}


def test_shapes_order_and_zero_init_residuals():
    torch.manual_seed(0)
    embs = _embs()
    embs["joints"] = tuple(embs["joints"].tolist())     # tuples and lists are accepted too
    embs["video"] = embs["video"].tolist()
    c = SemanticConditioner(d_model=D, embed_dim=E, region_embeddings=embs)
    assert c.n_regions == 3 and c.region_names == ["joints", "video", "zzz_unused"]
    allc = c.get_all_conditioning()
    assert allc.shape == (3, D)
    # zero-init residuals: conditioning == projector(embedding), rows by sorted name
    for i, name in enumerate(c.region_names):
        ref = c.projector.weight @ torch.as_tensor(embs[name], dtype=torch.float32)
        torch.testing.assert_close(allc[i], ref)
        torch.testing.assert_close(c.get_conditioning(name), ref)
        assert c.get_conditioning(name).shape == (D,)
    assert torch.count_nonzero(c.residuals) == 0


def test_freeze_flags_and_bias():
    frozen = SemanticConditioner(D, E, _embs())
    assert {n for n, _ in frozen.named_buffers()} == {"_embeddings"}
    assert {n for n, _ in frozen.named_parameters()} == {"projector.weight", "residuals"}
    free = SemanticConditioner(D, E, _embs(), freeze_embeddings=False, learn_residuals=False, projector_bias=True)
    assert {n for n, _ in free.named_parameters()} == {"_embeddings", "projector.weight", "projector.bias"}
    assert not list(free.named_buffers())


def test_condition_canvas_matches_reference_and_leaves_others_unchanged():
    torch.manual_seed(1)
    layout = _layout()
    c = SemanticConditioner(D, E, _embs())
    with torch.no_grad():
        c.residuals.normal_()                       # make residuals matter
    canvas = torch.randn(2, layout.num_positions, D)
    before = canvas.clone()
    out = c.condition_canvas(canvas, layout)
    assert out.shape == canvas.shape
    torch.testing.assert_close(canvas, before)      # input not modified
    # reference: add each conditioned region's vector at every one of its positions
    ref = before.clone()
    for name in ("video", "joints"):
        vec = c.get_conditioning(name)
        for i in layout.region_indices(name):
            ref[:, i] += vec
    torch.testing.assert_close(out, ref)
    # "extra" is not in the conditioner, the rest of the canvas is in no region: unchanged
    untouched = sorted(set(range(layout.num_positions)) - set(layout.region_indices("video"))
                       - set(layout.region_indices("joints")))
    assert untouched and torch.equal(out[:, untouched], before[:, untouched])


def test_gradients_reach_projector_and_residuals_not_frozen_embeddings():
    layout = _layout()
    c = SemanticConditioner(D, E, _embs())
    c.condition_canvas(torch.zeros(1, layout.num_positions, D), layout).square().sum().backward()
    assert c.projector.weight.grad is not None and c.projector.weight.grad.abs().sum() > 0
    assert c.residuals.grad is not None and c.residuals.grad.abs().sum() > 0
    assert not c._embeddings.requires_grad


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(SchemaError, match="'video' has 3 values, expected embed_dim=5"):
        SemanticConditioner(D, E, {"video": (1.0, 2.0, 3.0)})
    with pytest.raises(SchemaError, match="d_model"):
        SemanticConditioner(0, E, _embs())
    with pytest.raises(CanvasTypeError, match="region_embeddings"):
        SemanticConditioner(D, E, [1.0] * E)
    c = SemanticConditioner(D, E, _embs())
    with pytest.raises(UnknownRegionError, match="nope"):
        c.get_conditioning("nope")
    with pytest.raises(KeyError):                   # what canvas-engineering raised
        c.get_conditioning("nope")
    layout = _layout()
    with pytest.raises(ShapeError, match="positions"):
        c.condition_canvas(torch.zeros(1, layout.num_positions + 1, D), layout)
    with pytest.raises(ShapeError, match=r"\(B, N, 6\)"):
        c.condition_canvas(torch.zeros(layout.num_positions, D), layout)


def test_empty_conditioner_is_identity():
    layout = _layout()
    c = SemanticConditioner(D, E, {})
    assert c.n_regions == 0 and c.get_all_conditioning().shape == (0, D)
    x = torch.randn(1, layout.num_positions, D)
    torch.testing.assert_close(c.condition_canvas(x, layout), x)


def test_state_dict_compatible_with_canvas_engineering():
    ce_sem = pytest.importorskip("canvas_engineering.semantic")
    embs = _embs()
    theirs = ce_sem.SemanticConditioner(D, E, embs)
    with torch.no_grad():
        theirs.residuals.normal_()
    ours = SemanticConditioner(D, E, embs)
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours.get_all_conditioning(), theirs.get_all_conditioning())


def test_spatiotemporal_canvas_uses_the_conditioner():
    from canvas_core import SpatiotemporalCanvas

    layout = _layout()
    c = SemanticConditioner(D, E, _embs())
    canvas = SpatiotemporalCanvas(layout, semantic_conditioner=c)
    ident = canvas.region_identity("video")
    torch.testing.assert_close(ident - canvas.period_embedding(1), c.get_conditioning("video"))


def test_condition_canvas_under_torch_compile():
    layout = _layout()
    c = SemanticConditioner(D, E, _embs())
    x = torch.randn(2, layout.num_positions, D)
    compiled = torch.compile(lambda t: c.condition_canvas(t, layout), backend="aot_eager", fullgraph=False)
    torch.testing.assert_close(compiled(x), c.condition_canvas(x, layout))


def test_non_finite_embeddings_and_integer_canvases_are_refused():
    import torch

    from canvas_core import CanvasLayout
    from canvas_core.errors import CanvasError
    from canvas_core.semantic import SemanticConditioner

    layout = CanvasLayout(T=1, d_model=4, spatial_shape=(3,), regions={"a": (0, 1, 0, 1), "b": (0, 1, 1, 3)})
    for bad in (float("nan"), float("inf")):
        with pytest.raises(CanvasError, match="region 'a' holds NaN or infinite"):
            SemanticConditioner(d_model=4, embed_dim=2, region_embeddings={"a": (bad, 1.0), "b": (1.0, 0.0)})
    cond = SemanticConditioner(d_model=4, embed_dim=2, region_embeddings={"a": (0.3, 0.1), "b": (0.2, 0.4)})
    with pytest.raises(CanvasError, match="floating tensor"):
        cond.condition_canvas(torch.zeros(1, 3, 4, dtype=torch.long), layout)
    assert torch.isfinite(cond.condition_canvas(torch.zeros(1, 3, 4), layout)).all()
