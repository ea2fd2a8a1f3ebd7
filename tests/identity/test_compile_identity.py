"""The compiler resolves every IdentitySpec's binder through the registry and reports it."""

from __future__ import annotations

import json

import pytest

from canvas_core import (
    CanvasError,
    CanvasLayout,
    CanvasProgram,
    CanvasSchema,
    CanvasTopology,
    Connection,
    IdentitySpec,
    RegionProgram,
)
from canvas_core.compiler import ProgramCompiler
from canvas_core.errors import UnknownNameError

pytest.importorskip("canvas_plugin_identity")


def _program(objs, mode_of_objs="runtime", tracks=None):
    layout = CanvasLayout(T=2, H=4, W=4, d_model=16, regions={
        "vis": (0, 2, 0, 2, 0, 4), "objs": (0, 2, 2, 3, 0, 4), "tracks": (0, 2, 3, 4, 0, 4)})
    topo = CanvasTopology(connections=[Connection("objs", "vis"), Connection("tracks", "objs")])
    return CanvasProgram(schema=CanvasSchema(layout, topo), regions={
        "vis": RegionProgram(family="observation"),
        "objs": RegionProgram(family="state", identity=objs, compile_mode=mode_of_objs),
        "tracks": RegionProgram(family="state", identity=tracks)})


@pytest.mark.parametrize("spec", [
    IdentitySpec(mode="persistent", slot_capacity=4),
    IdentitySpec(mode="ephemeral", slot_capacity=2, binding_fn="slot_attention"),
    IdentitySpec(mode="tracklet", slot_capacity=7, birth_death=True),
])
def test_each_mode_is_resolved_and_reported(spec):
    compiled = ProgramCompiler(_program(spec)).compile(device="cpu")
    rec = compiled.identity["objs"]
    assert set(compiled.identity) == {"objs"}
    assert rec["mode"] == spec.mode and rec["slot_capacity"] == spec.slot_capacity
    assert rec["birth_death"] == spec.birth_death and rec["binding_fn"] == spec.binding_fn
    cls = "CompetitiveSlotBinding" if spec.binding_fn == "slot_attention" else "SlotBindingModule"
    assert rec["implementation"] == f"canvas_plugin_identity.binding:{cls}"
    assert rec["provider"].startswith("canvas-plugin-identity")
    report = compiled.report()
    assert "identity binders:" in report and cls in report and spec.mode in report
    d = compiled.to_dict()
    assert d["identity"]["objs"] == rec
    json.dumps(d)


def test_unknown_binding_fn_fails_the_compile_naming_the_region():
    with pytest.raises(UnknownNameError) as info:
        ProgramCompiler(_program(IdentitySpec(binding_fn="hungarian"))).compile(device="cpu")
    msg = str(info.value)
    assert isinstance(info.value, CanvasError)
    assert "'objs'" in msg and "hungarian" in msg and "cross_attention" in msg


def test_eliminated_regions_and_resolve_false_skip_the_binder():
    prog = _program(IdentitySpec(binding_fn="hungarian"), mode_of_objs="constant",
                    tracks=IdentitySpec(mode="tracklet", slot_capacity=3))
    compiled = ProgramCompiler(prog).compile(device="cpu")  # objs is not active: not resolved
    assert set(compiled.identity) == {"tracks"}
    assert "identity binders" in compiled.report()
    compiled = ProgramCompiler(_program(IdentitySpec(binding_fn="hungarian"))).compile(device="cpu", resolve=False)
    assert compiled.identity == {}
    assert "identity binders" not in compiled.report()


@pytest.mark.parametrize("kw, words", [
    (dict(d_model=16, n_slots=0), ("SlotBindingModule", "n_slots", "slot_capacity", "n_slots=1")),
    (dict(d_model=0, n_slots=2), ("SlotBindingModule", "d_model", "d_model=1")),
])
def test_bad_sizes_name_the_binder_and_the_fix(kw, words):
    from canvas_core.identity import create_binder

    with pytest.raises(CanvasError) as info:
        create_binder("cross_attention", **kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
