"""Cortex registry and per-family learning defaults."""

import pytest

from canvas_core import (CanvasError, Connection, CortexRegistry, CortexSpec, FAMILY_DEFAULTS,
                         LearningSpec, MaskSpec, default_learning)


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
    with pytest.raises(LookupError):
        reg.assign("x", "auditory")
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


def test_default_learning():
    assert default_learning("observation") == LearningSpec(
        mode="ssl_prediction", losses=("next_step", "masked_prediction"), compile_mode="freeze")
    assert default_learning("memory").compile_mode == "export"
    assert default_learning("action").losses == ("task",)
    assert set(FAMILY_DEFAULTS) == {"observation", "state", "memory", "residual", "action"}
    assert default_learning("my_custom_family") == LearningSpec()
    with pytest.raises(CanvasError):
        default_learning(3)
