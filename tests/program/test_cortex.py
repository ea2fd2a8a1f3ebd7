"""Cortex zones: CortexSpec validation, CortexRegistry queries, errors and compiler helpers."""

import pytest

from canvas_core import CanvasError, Connection, CortexRegistry, CortexSpec, MaskSpec


def _reg():
    reg = CortexRegistry()
    reg.register(CortexSpec(name="visual", bounds=(0, 4, 0, 8, 0, 8), tile=(4, 4)))
    reg.register(CortexSpec(name="motor", bounds=(0, 4, 0, 2, 0, 2), tile=(2, 2), local_backend="linear_attention"))
    reg.assign("camera", "visual"); reg.assign("depth", "visual"); reg.assign("arm", "motor")
    return reg


def test_registry_queries():
    reg = _reg()
    assert reg.same_cortex("camera", "depth") and not reg.same_cortex("camera", "arm")
    assert not reg.same_cortex("x", "y")
    assert reg.cortex_for("camera").name == "visual" and reg.cortex_for("nobody") is None
    assert reg.regions_in("visual") == ["camera", "depth"]
    assert reg.cortex_names == ["motor", "visual"] and reg.n_cortices == 2 and reg.n_assigned == 3
    reg.unassign("depth"); assert reg.regions_in("visual") == ["camera"]
    reg.unregister("visual"); assert reg.cortex_for("camera") is None and reg.n_assigned == 1
    assert "motor" in reg.summary()


def test_registry_errors():
    reg = _reg()
    with pytest.raises(ValueError):
        reg.register(CortexSpec(name="visual"))
    with pytest.raises(KeyError, match="auditory"):
        reg.assign("x", "auditory")
    with pytest.raises(CanvasError, match="auditory"):
        reg.regions_in("auditory")
    with pytest.raises(KeyError):
        reg.unregister("auditory")
    with pytest.raises(ValueError):
        reg.assign("camera", "motor")
    for bad in [dict(name=""), dict(name="z", bounds=(0, 1, 0)), dict(name="z", tile=(0, 2)),
                dict(name="z", bounds=(0, 1, 0, 2), tile=(2, 2))]:
        with pytest.raises(CanvasError):
            CortexSpec(**bad)


def test_compiler_hooks():
    reg = _reg()
    intra, cross = Connection("camera", "depth"), Connection("camera", "arm")
    assert reg.resolve_fn(intra, "cross_attention") == "local_attention"
    assert reg.resolve_fn(cross, "cross_attention") == "cross_attention"
    assert reg.resolve_fn(Connection("camera", "depth", fn="gated"), "x") == "gated"
    assert reg.mask_for(intra) == MaskSpec(kind="tile", tile_shape=(4, 4))
    assert reg.mask_for(cross) is None
    own = MaskSpec(kind="tile", tile_h=2, tile_w=2)
    assert reg.mask_for(Connection("camera", "depth", mask=own)) is own


def test_local_fn_and_tile_mask():
    reg = _reg()
    assert reg.local_fn("camera", "depth") == "local_attention"
    assert reg.local_fn("arm", "arm") == "linear_attention"
    assert reg.local_fn("camera", "arm") is None and reg.local_fn("x", "x") is None
    assert reg.tile_mask("depth", "camera") == MaskSpec(kind="tile", tile_shape=(4, 4))
    assert reg.tile_mask("arm", "arm") == MaskSpec(kind="tile", tile_shape=(2, 2))
    assert reg.tile_mask("camera", "arm") is None


def test_spec_is_frozen_and_normalised():
    spec = CortexSpec(name="v", bounds=[0, 2, 0, 4], tile=[2])
    assert spec.bounds == (0, 2, 0, 4) and spec.tile == (2,)
    import dataclasses
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "w"
    with pytest.raises(CanvasError):
        CortexRegistry().register("visual")


def test_same_behaviour_as_canvas_engineering():
    ce = pytest.importorskip("canvas_engineering.cortex")
    ours, theirs = CortexRegistry(), ce.CortexRegistry()
    for reg, Spec in ((ours, CortexSpec), (theirs, ce.CortexSpec)):
        reg.register(Spec(name="visual", bounds=(0, 4, 0, 8, 0, 8), tile=(4, 4)))
        reg.register(Spec(name="motor", bounds=(0, 4, 0, 2, 0, 2), tile=(2, 2)))
        for r, c in [("camera", "visual"), ("depth", "visual"), ("arm", "motor"), ("camera", "visual")]:
            reg.assign(r, c)
    for a in ["camera", "depth", "arm", "none"]:
        for b in ["camera", "depth", "arm", "none"]:
            assert ours.same_cortex(a, b) == theirs.same_cortex(a, b)
    for n in ["visual", "motor"]:
        assert ours.regions_in(n) == theirs.regions_in(n)
    assert ours.cortex_names == theirs.cortex_names
