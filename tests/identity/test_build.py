"""Facade imports, registry resolution of binding_fn, build_identity_binders from a program."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("canvas_plugin_identity")

from canvas_core.errors import CanvasTypeError, UnknownNameError  # noqa: E402
from canvas_core.identity import IdentitySpec, SlotTracker, build_identity_binders, create_binder  # noqa: E402
from canvas_core.program import CanvasProgram, RegionProgram  # noqa: E402
from canvas_core.schema import CanvasLayout, CanvasSchema  # noqa: E402
from canvas_plugin_identity.binding import CompetitiveSlotBinding, SlotBindingModule  # noqa: E402


def _program(**identities):
    regions = {"vis": (0, 2, 0, 2, 0, 4), "objs": (0, 2, 2, 3, 0, 4), "cars.tracks": (0, 2, 3, 4, 0, 4)}
    lay = CanvasLayout(T=2, H=4, W=4, d_model=32, regions=regions)
    progs = {name: RegionProgram(family="state", identity=identities.get(name.replace(".", "_")))
             for name in regions}
    return CanvasProgram(schema=CanvasSchema(layout=lay), regions=progs)


def test_seed_import_paths():
    import canvas_core
    import canvas_core.identity as facade
    from canvas_core.identity import SlotBindingModule as A

    assert A is SlotBindingModule and canvas_core.SlotBindingModule is SlotBindingModule
    assert facade.IdentitySpec is canvas_core.IdentitySpec
    spec = IdentitySpec(mode="persistent", slot_capacity=32)
    binder = A(d_model=256, n_slots=spec.slot_capacity, n_heads=4)
    assert binder(torch.randn(2, 10, 256)).shape == (2, 32, 256)


def test_registering_is_lazy_and_names_the_binders():
    calls = []

    class FakeRegistry:
        def add(self, name, factory, **meta):
            calls.append((name, factory, meta))

    import canvas_plugin_identity

    canvas_plugin_identity.canvas_register_identity(FakeRegistry())
    names = {c[0]: c[1] for c in calls}
    assert names == {"cross_attention": "canvas_plugin_identity.binding:SlotBindingModule",
                     "slot_attention": "canvas_plugin_identity.binding:CompetitiveSlotBinding"}
    code = "import canvas_plugin_identity, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_binders_resolve_through_the_registry():
    plugins = pytest.importorskip("canvas_core.plugins")
    assert {"cross_attention", "slot_attention"} <= set(plugins.list_identity_binders())
    assert isinstance(create_binder("slot_attention", d_model=16, n_slots=3), CompetitiveSlotBinding)
    with pytest.raises(UnknownNameError) as info:
        create_binder("hungarian", d_model=16, n_slots=3)
    assert "cross_attention" in str(info.value) and "hungarian" in str(info.value)


def test_build_identity_binders_from_a_program():
    prog = _program(objs=IdentitySpec(mode="tracklet", slot_capacity=5, birth_death=True),
                    cars_tracks=IdentitySpec(mode="ephemeral", slot_capacity=3, binding_fn="slot_attention"))
    binders = build_identity_binders(prog, d_model=32)
    assert isinstance(binders, torch.nn.ModuleDict)
    assert set(binders.regions) == {"objs", "cars.tracks"} and "vis" not in binders
    objs, cars = binders["objs"], binders["cars.tracks"]
    assert isinstance(objs, SlotTracker) and objs.mode == "tracklet"
    assert type(objs.binder) is SlotBindingModule and objs.binder.n_slots == 5 and objs.binder.birth_death
    assert isinstance(cars.binder, CompetitiveSlotBinding) and cars.mode == "ephemeral"
    assert cars.binder.n_slots == 3 and not cars.binder.birth_death
    # parameters are registered (optimisers and state_dict see them)
    assert sum(p.numel() for p in binders.parameters()) == sum(
        p.numel() for m in (objs, cars) for p in m.parameters())
    out = binders({"objs": torch.randn(2, 4, 32), "cars.tracks": torch.randn(2, 4, 32)})
    assert out["objs"].slots.shape == (2, 5, 32) and out["cars.tracks"].state is None
    assert out["objs"].alive.shape == (2, 5)
    with pytest.raises(LookupError):
        binders["vis"]


def test_unknown_binding_fn_is_a_clear_error():
    prog = _program(objs=IdentitySpec(binding_fn="hungarian"))
    with pytest.raises(UnknownNameError) as info:
        build_identity_binders(prog, d_model=32)
    msg = str(info.value)
    assert "'objs'" in msg and "hungarian" in msg and "cross_attention" in msg


def test_bad_arguments():
    with pytest.raises(CanvasTypeError):
        build_identity_binders(42, d_model=32)
    with pytest.raises(CanvasTypeError):
        build_identity_binders(_program(), d_model=0)
    assert len(build_identity_binders(_program(), d_model=32)) == 0


def test_without_the_plugin_the_facade_gives_an_install_hint():
    code = (
        "import sys\n"
        "sys.modules['canvas_plugin_identity'] = None\n"
        "sys.modules['canvas_plugin_identity.binding'] = None\n"
        "from canvas_core.errors import PluginLoadError\n"
        "import canvas_core.identity as f\n"
        "try:\n"
        "    f.SlotBindingModule\n"
        "except PluginLoadError as e:\n"
        "    assert 'canvas-plugin-identity' in str(e), e\n"
        "    print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_bind_canvas_runs_each_region_over_its_frames_in_order():
    torch.manual_seed(0)
    prog = _program(objs=IdentitySpec(mode="persistent", slot_capacity=2))
    lay = prog.schema.layout
    binders = build_identity_binders(prog, d_model=32)
    x = torch.randn(3, lay.num_positions, 32)
    with torch.no_grad():
        slots, states = binders.bind_canvas(x, lay)
        binder = binders["objs"].binder
        # by hand: frame 0 from the bank, frame 1 from frame 0's slots
        f0 = x[:, [lay.flat_index(0, 2, w) for w in range(4)]]
        f1 = x[:, [lay.flat_index(1, 2, w) for w in range(4)]]
        s0 = binder(f0)
        s1 = binder(f1, s0)
    assert slots["objs"].shape == (3, 2, 2, 32)
    torch.testing.assert_close(slots["objs"][:, 0], s0)
    torch.testing.assert_close(slots["objs"][:, 1], s1)
    torch.testing.assert_close(states["objs"], s1)
