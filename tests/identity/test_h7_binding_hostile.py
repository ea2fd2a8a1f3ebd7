"""Hostile identity-binding probes: several steps under autocast, a tracker whose precision
changes between steps, misnamed states, and binder results on another device."""

from __future__ import annotations

import pytest
import torch

from canvas_core.errors import ShapeError, UnknownRegionError
from canvas_core.extend import BindingResult
from canvas_core.identity import SlotTracker, build_identity_binders, create_binder
from canvas_core.program import IdentitySpec

torch.set_num_threads(1)


class _RP:
    identity = IdentitySpec(slot_capacity=3, mode="tracklet", birth_death=True)


@pytest.mark.parametrize("fn", ["cross_attention", "slot_attention"])
def test_a_tracker_carries_its_state_across_steps_under_autocast(fn):
    torch.manual_seed(0)
    tr = SlotTracker(create_binder(fn, 8, 3, n_heads=2, birth_death=True), "tracklet", n_slots=3)
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(2, 5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        obs = lin(x)  # bfloat16, the float32 state meets it on the second step
        first = tr(obs)
        second = tr(obs, first.state)
        tr.step(obs)
        kept = tr.step(obs)
    assert obs.dtype == torch.bfloat16 and first.state.dtype == torch.float32
    assert second.slots.shape == (2, 3, 8) and torch.isfinite(second.slots.float()).all()
    torch.testing.assert_close(kept.slots, second.slots)


def test_a_slot_state_of_another_dtype_is_still_refused_outside_autocast():
    b = create_binder("cross_attention", 8, 3, n_heads=2)
    with pytest.raises(ShapeError, match="slots: the inputs are torch.float64"):
        b(torch.randn(2, 5, 8), torch.randn(2, 3, 8, dtype=torch.float64))
    with pytest.raises(ShapeError, match="slots must be a floating-point tensor"):
        b(torch.randn(2, 5, 8), torch.zeros(2, 3, 8, dtype=torch.long))


def test_step_converts_the_carried_state_when_the_tracker_changes_precision():
    torch.manual_seed(0)
    tr = SlotTracker(create_binder("cross_attention", 8, 3, n_heads=2))
    obs = torch.randn(2, 5, 8)
    state = tr.step(obs).state
    tr.double()
    out = tr.step(obs.double())
    ref = SlotTracker(tr.binder)(obs.double(), state.double())
    assert torch.equal(out.slots, ref.slots)


def test_forward_refuses_states_of_regions_without_a_binder():
    ib = build_identity_binders({"objects": _RP()}, 8)
    obs = {"objects": torch.randn(2, 4, 8)}
    with pytest.raises(UnknownRegionError, match=r"\['object'\].*Did you mean 'objects'"):
        ib(obs, {"object": ib["objects"].init_state(2)})
    assert ib(obs, {"objects": None})["objects"].slots.shape == (2, 3, 8)


class _Elsewhere(torch.nn.Module):
    n_slots = 3

    def initial_slots(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(batch_size, 3, 8)

    def bind(self, obs, slots=None, obs_mask=None) -> BindingResult:
        s = torch.zeros(obs.shape[0], 3, 8, device="meta")
        return BindingResult(s, s, None, None)


def test_a_binder_result_on_another_device_is_refused():
    with pytest.raises(ShapeError, match="_Elsewhere.*slots on meta for observations on cpu"):
        SlotTracker(_Elsewhere(), "tracklet")(torch.randn(2, 4, 8))


@pytest.mark.parametrize("fn", ["cross_attention", "slot_attention"])
def test_a_float_obs_mask_is_refused_not_read_backwards(fn):
    from canvas_core.errors import CanvasTypeError

    b = create_binder(fn, 8, 3, n_heads=2)
    obs = torch.randn(2, 4, 8)
    additive = torch.tensor([[0.0, 0.0, float("-inf"), float("-inf")]]).expand(2, 4)  # .bool() inverts it
    with pytest.raises(CanvasTypeError, match=r"obs_mask must be a bool tensor.*obs_mask.isfinite\(\)"):
        b(obs, obs_mask=additive)
    torch.testing.assert_close(b(obs, obs_mask=torch.tensor([[1, 1, 0, 0]]).expand(2, 4)),
                               b(obs, obs_mask=additive.isfinite()))
