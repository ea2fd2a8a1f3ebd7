"""The identity-binder contract: ``BindingResult`` is public, and the tracker refuses a binder
whose ``bind`` breaks it (audit: a binder returning 6 slots for slot_capacity=5 was accepted and
bind_canvas returned (B, T, 6, D))."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from canvas_core import CanvasLayout, CanvasProgram, CanvasSchema, IdentitySpec, RegionProgram
from canvas_core.errors import CanvasTypeError, ShapeError
from canvas_core.identity import SlotTracker, build_identity_binders
from canvas_core.plugins import register_identity_binder, unregister_identity_binder


def test_binding_result_is_one_public_class():
    import canvas_plugin_identity
    from canvas_plugin_identity import binding

    from canvas_core.extend import BindingResult
    from canvas_core.identity import BindingResult as FromIdentity

    assert BindingResult is FromIdentity is binding.BindingResult is canvas_plugin_identity.BindingResult
    assert BindingResult._fields == ("slots", "raw_slots", "attn", "alive_logits")
    res = binding.SlotBindingModule(8, 3).bind(torch.randn(2, 4, 8))
    assert isinstance(res, BindingResult)


def _binder(extra_slots=0, bank_slots=0, result=None):
    from canvas_core.extend import BindingResult

    class Binder(nn.Module):
        def __init__(self, d_model, n_slots, n_heads=4, birth_death=False):
            super().__init__()
            self.bank = nn.Parameter(torch.zeros(n_slots + bank_slots, d_model))

        def initial_slots(self, B):
            return self.bank.unsqueeze(0).expand(B, -1, -1)

        def bind(self, obs, slots=None, obs_mask=None):
            if result is not None:
                return result
            B, n, D = obs.shape
            s = self.initial_slots(B)
            s = torch.cat([s, s[:, :1].expand(B, extra_slots, D)], 1) + obs.mean(1, keepdim=True)
            return BindingResult(slots=s, raw_slots=s, attn=torch.ones(B, s.shape[1], n) / n, alive_logits=None)

        def forward(self, obs, slots=None, obs_mask=None):
            return self.bind(obs, slots, obs_mask).slots

        def alive_mask(self, obs, slots=None):
            return torch.ones(obs.shape[0], self.bank.shape[0], dtype=torch.bool)

    return Binder


LAYOUT = CanvasLayout(T=2, H=4, W=4, d_model=32, regions={"vision": (0, 2, 0, 3, 0, 4), "objects": (0, 2, 3, 4, 0, 4)})


def _binders(name, mode="persistent"):
    prog = CanvasProgram(schema=CanvasSchema(layout=LAYOUT), regions={
        "objects": RegionProgram(identity=IdentitySpec(mode=mode, slot_capacity=5, binding_fn=name))})
    return build_identity_binders(prog, d_model=32)


@pytest.fixture
def registered():
    names = []

    def reg(name, factory):
        register_identity_binder(name, factory)
        names.append(name)
        return name

    yield reg
    for n in names:
        unregister_identity_binder(n)


def test_a_binder_following_the_contract_runs(registered):
    binders = _binders(registered("t_contract_ok", _binder()))
    slots, _ = binders.bind_canvas(torch.randn(2, LAYOUT.num_positions, 32), LAYOUT)
    assert tuple(slots["objects"].shape) == (2, 2, 5, 32)


def test_a_wrong_slot_count_is_refused_naming_the_binder(registered):
    binders = _binders(registered("t_contract_six", _binder(extra_slots=1)))
    x = torch.randn(2, LAYOUT.num_positions, 32)
    msg = r"identity binder 't_contract_six' \(Binder\): bind\(\) returned slots of shape \(2, 6, 32\).*\(2, 5, 32\)"
    with pytest.raises(ShapeError, match=msg + r".*slot_capacity"):
        binders.bind_canvas(x, LAYOUT)
    with pytest.raises(ShapeError, match=msg):
        binders["objects"](x[:, LAYOUT.region_indices("objects")])


def test_a_wrong_bank_is_refused_in_tracklet_mode(registered):
    from canvas_core.extend import BindingResult

    s = torch.zeros(2, 5, 32)
    name = registered("t_contract_bank", _binder(bank_slots=1, result=BindingResult(s, s, None, torch.ones(2, 5))))
    with pytest.raises(ShapeError, match=r"'t_contract_bank'.*initial_slots\(2\) returned shape \(2, 6, 32\)"):
        _binders(name, mode="tracklet")["objects"](torch.randn(2, 4, 32))


@pytest.mark.parametrize("result, exc, match", [
    ((torch.zeros(2, 5, 32),), CanvasTypeError, "returned tuple, not a BindingResult"),
    ("slots", CanvasTypeError, "returned str, not a BindingResult"),
])
def test_a_result_that_is_no_binding_result_is_refused(registered, result, exc, match):
    tracker = _binders(registered("t_contract_bad", _binder(result=result)))["objects"]
    with pytest.raises(exc, match=match):
        tracker(torch.randn(2, 4, 32))


def test_wrong_fields_are_refused():
    from canvas_core.extend import BindingResult

    good = torch.zeros(2, 5, 32)
    cases = [
        (BindingResult(good, torch.zeros(2, 5, 16), None, None), ShapeError, r"raw_slots of shape \(2, 5, 16\)"),
        (BindingResult(good, good, torch.zeros(2, 5, 3), None), ShapeError, r"attn of shape \(2, 5, 3\)"),
        (BindingResult(good, good, None, torch.zeros(2, 4)), ShapeError, r"alive_logits of shape \(2, 4\)"),
        (BindingResult(good, [1.0], None, None), CanvasTypeError, "raw_slots of type list"),
    ]
    for result, exc, match in cases:
        tracker = SlotTracker(_binder(result=result)(32, 5), "persistent", n_slots=5, name="mine")
        with pytest.raises(exc, match=r"identity binder 'mine' \(Binder\).*" + match):
            tracker(torch.randn(2, 4, 32))
    with pytest.raises(CanvasTypeError, match="n_slots must be a positive int"):
        SlotTracker(_binder()(32, 5), n_slots=0)
