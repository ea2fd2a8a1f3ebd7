"""Identity binding defects found by an audit: a module-key collision between region names, a
memory guard that counted only the slot bank, deepcopy of a stepped tracker, and a NaN
observation wiped by a tracklet reset."""

from __future__ import annotations

import copy

import pytest
import torch

from canvas_core import CanvasLayout, CanvasProgram, CanvasSchema, IdentitySpec, RegionProgram
from canvas_core.errors import RegionError, SizeLimitError
from canvas_core.identity import SlotBindingModule, SlotTracker, build_identity_binders


def _colliding_program() -> CanvasProgram:
    layout = CanvasLayout(T=2, H=4, W=4, d_model=32,
                          regions={"a.b": (0, 2, 0, 2, 0, 4), "a__dot__b": (0, 2, 2, 4, 0, 4)})
    return CanvasProgram(schema=CanvasSchema(layout=layout), regions={
        "a.b": RegionProgram(family="state", identity=IdentitySpec(mode="persistent", slot_capacity=3)),
        "a__dot__b": RegionProgram(family="state", identity=IdentitySpec(mode="persistent", slot_capacity=7))})


def test_regions_sharing_a_binder_key_are_refused() -> None:
    with pytest.raises(RegionError, match=r"regions 'a\.b' and 'a__dot__b' would share the binder key "
                                          r"'a__dot__b'.*rename one"):
        build_identity_binders(_colliding_program(), d_model=32)


def test_the_canvas_refuses_them_too() -> None:
    from canvas_core import SpatiotemporalCanvas

    prog = _colliding_program()
    with pytest.raises(RegionError, match="would share the binder key"):
        SpatiotemporalCanvas(prog.schema.layout, program=prog)


def test_regions_with_distinct_keys_keep_their_own_slots() -> None:
    layout = CanvasLayout(T=1, H=2, W=4, d_model=16,
                          regions={"a.b": (0, 1, 0, 1, 0, 4), "a_b": (0, 1, 1, 2, 0, 4)})
    prog = CanvasProgram(schema=CanvasSchema(layout=layout), regions={
        "a.b": RegionProgram(family="state", identity=IdentitySpec(slot_capacity=3)),
        "a_b": RegionProgram(family="state", identity=IdentitySpec(slot_capacity=5))})
    b = build_identity_binders(prog, d_model=16)
    assert (b["a.b"].n_slots, b["a_b"].n_slots) == (3, 5)
    assert sorted(b.keys()) == ["a__dot__b", "a_b"]  # the stored keys (checkpoints) are unchanged


def test_the_byte_guard_counts_every_parameter(monkeypatch) -> None:
    # (1, 256) bank: 1 KiB; the projections and MLP: about 8 * 256**2 * 4 bytes = 2 MiB
    monkeypatch.setenv("CANVAS_MAX_BYTES", str(1 << 20))
    with pytest.raises(SizeLimitError, match=r"SlotBindingModule\(d_model=256, n_slots=1\): its float32 "
                                             r"parameters.*refused before allocating"):
        SlotBindingModule(d_model=256, n_slots=1, n_heads=1)
    monkeypatch.setenv("CANVAS_MAX_BYTES", str(4 << 20))
    m = SlotBindingModule(d_model=256, n_slots=1, n_heads=1, birth_death=True)
    assert 4 * sum(p.numel() for p in m.parameters()) <= 4 << 20


@pytest.mark.parametrize("birth_death", [False, True])
def test_the_count_is_exact(birth_death: bool) -> None:
    from canvas_plugin_identity.binding import _param_count

    m = SlotBindingModule(d_model=24, n_slots=5, n_heads=3, birth_death=birth_death)
    assert _param_count(24, 5, 3, birth_death) == sum(p.numel() for p in m.parameters())


def test_deepcopy_after_step_copies_a_detached_state() -> None:
    torch.manual_seed(0)
    tr = SlotTracker(SlotBindingModule(16, 4), "persistent")
    tr.step(torch.randn(2, 3, 16))
    assert tr.state.grad_fn is not None
    dup = copy.deepcopy(tr)
    assert dup.state.grad_fn is None and torch.equal(dup.state, tr.state)
    assert dup.state.data_ptr() != tr.state.data_ptr()
    assert tr.state.grad_fn is not None  # the original keeps its graph
    obs = torch.randn(2, 3, 16)
    torch.testing.assert_close(dup.step(obs).slots, tr.step(obs).slots)


def test_a_nan_observation_stays_visible_in_tracklet_mode() -> None:
    torch.manual_seed(0)
    tr = SlotTracker(SlotBindingModule(16, 4, birth_death=True), "tracklet")
    x = torch.randn(2, 5, 16)
    x[1, 2, 3] = float("nan")
    step = tr(x)
    assert torch.isnan(step.alive_logits[1]).all()
    assert torch.isnan(step.state[1]).any(), "the NaN was wiped by a reset to the slot bank"
    assert torch.isfinite(step.state[0]).all()
    assert torch.isnan(tr(torch.randn(2, 5, 16), step.state).slots[1]).any()


def test_a_finite_dead_slot_is_still_reset_to_the_bank() -> None:
    tr = SlotTracker(SlotBindingModule(8, 3, n_heads=1, birth_death=True), "tracklet")
    with torch.no_grad():
        tr.binder.gate.weight.zero_()
        tr.binder.gate.bias.fill_(-1.0)  # every slot dead
    step = tr(torch.randn(2, 4, 8))
    assert not step.alive.any()
    torch.testing.assert_close(step.state, tr.init_state(2))
