"""SlotBindingModule against a reference written here; modes of SlotTracker; bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

pytest.importorskip("canvas_plugin_identity")

from canvas_core.errors import CanvasError, CanvasTypeError, ProgramError, ShapeError  # noqa: E402
from canvas_core.identity import SlotBindingModule, SlotTracker  # noqa: E402
from canvas_plugin_identity.binding import CompetitiveSlotBinding  # noqa: E402


def _reference(m, obs, slots, competitive=False):
    """Per batch item, per head, per slot: plain loops over the module's weights."""
    B, N, D = obs.shape
    H, dh = m.n_heads, D // m.n_heads
    out = torch.empty(B, m.n_slots, D)
    for b in range(B):
        o = m.norm_obs(obs[b])
        k, v = m.to_k(o), m.to_v(o)
        q = m.to_q(m.norm_slots(slots[b]))
        heads = []
        for h in range(H):
            sl = slice(h * dh, (h + 1) * dh)
            logits = q[:, sl] @ k[:, sl].T / math.sqrt(dh)  # (S, N)
            if competitive:
                w = torch.softmax(logits, dim=0)
                w = w / (w.sum(dim=1, keepdim=True) + 1e-8)
            else:
                w = torch.softmax(logits, dim=1)
            heads.append(w @ v[:, sl])
        new = slots[b] + m.to_out(torch.cat(heads, dim=-1))
        out[b] = new + m.mlp(new)
    return out


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), N=st.integers(1, 7), S=st.integers(1, 5), H=st.sampled_from([1, 2, 4]),
       competitive=st.booleans(), seed=st.integers(0, 10_000))
def test_matches_reference(B, N, S, H, competitive, seed):
    torch.manual_seed(seed)
    cls = CompetitiveSlotBinding if competitive else SlotBindingModule
    m = cls(d_model=16, n_slots=S, n_heads=H)
    obs = torch.randn(B, N, 16)
    with torch.no_grad():
        got = m(obs)
        ref = _reference(m, obs, m.initial_slots(B), competitive)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
        slots = torch.randn(B, S, 16)
        torch.testing.assert_close(m(obs, slots), _reference(m, obs, slots, competitive), atol=1e-5, rtol=1e-4)


def test_seed_api_shapes_and_alive_mask():
    binder = SlotBindingModule(d_model=64, n_slots=8, n_heads=4)
    obs = torch.randn(2, 10, 64)
    assert binder(obs).shape == (2, 8, 64)
    mask = binder.alive_mask(obs)
    assert mask.dtype == torch.bool and mask.shape == (2, 8) and bool(mask.all())
    gated = SlotBindingModule(d_model=64, n_slots=8, birth_death=True)
    with torch.no_grad():
        gated.gate.bias.fill_(-100.0)  # every slot dead
        assert not gated.alive_mask(obs).any()
        assert (gated(obs) == 0).all()
        gated.gate.bias.fill_(100.0)  # every slot alive
        assert gated.alive_mask(obs).all()
        res = gated.bind(obs)
        torch.testing.assert_close(res.slots, res.raw_slots)


def test_masked_observations_are_ignored_and_empty_sets_are_finite():
    torch.manual_seed(0)
    m = SlotBindingModule(16, 3, n_heads=2, birth_death=True)
    obs = torch.randn(2, 5, 16)
    keep = torch.tensor([[True, True, False, True, False], [True, False, False, False, False]])
    with torch.no_grad():
        masked = m.bind(obs, obs_mask=keep)
        for b in range(2):
            sub = m.bind(obs[b:b + 1, keep[b]])
            torch.testing.assert_close(masked.raw_slots[b:b + 1], sub.raw_slots, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(masked.alive_logits[b:b + 1], sub.alive_logits, atol=1e-4, rtol=1e-4)
        none = m.bind(obs, obs_mask=torch.zeros(2, 5, dtype=torch.bool))
        empty = m.bind(torch.randn(2, 0, 16))
    for r in (none, empty):
        assert torch.isfinite(r.raw_slots).all() and torch.isfinite(r.alive_logits).all()
        assert (r.attn == 0).all()


def test_tracker_modes_carry_state():
    torch.manual_seed(0)
    binder = SlotBindingModule(16, 3, n_heads=2)
    o1, o2 = torch.randn(2, 4, 16), torch.randn(2, 4, 16)
    with torch.no_grad():
        s1 = binder(o1)
        pers = SlotTracker(binder, "persistent")
        a = pers.step(o1)
        b = pers.step(o2)
        torch.testing.assert_close(a.slots, s1)
        torch.testing.assert_close(b.slots, binder(o2, s1))  # bound from the carried slots
        eph = SlotTracker(binder, "ephemeral")
        e1 = eph.step(o1)
        e2 = eph.step(o2)
        assert e1.state is None
        torch.testing.assert_close(e2.slots, binder(o2))  # from the bank every step
        pers.reset()
        torch.testing.assert_close(pers.step(o2).slots, binder(o2))


def test_tracklet_resets_dead_slots_to_the_bank():
    torch.manual_seed(0)
    binder = SlotBindingModule(16, 4, n_heads=2, birth_death=True)
    tr = SlotTracker(binder, "tracklet")
    obs = torch.randn(3, 5, 16)
    with torch.no_grad():
        step = tr(obs)
        bank = binder.initial_slots(3)
        res = binder.bind(obs)
        alive = res.alive_logits > 0
        assert alive.any() and (~alive).any()  # this seed gives both (otherwise the test is vacuous)
        torch.testing.assert_close(step.state[~alive], bank[~alive])
        torch.testing.assert_close(step.state[alive], res.raw_slots[alive])
        assert (step.slots[~alive] == 0).all()


@pytest.mark.parametrize("make, err", [
    (lambda: SlotBindingModule(30, 4, n_heads=4), ShapeError),
    (lambda: SlotBindingModule(32, 0), CanvasTypeError),
    (lambda: SlotBindingModule(32, 2.5), CanvasTypeError),
    (lambda: SlotBindingModule(32, 2, birth_death="yes"), CanvasTypeError),
    (lambda: SlotTracker(SlotBindingModule(32, 2), "forever"), ProgramError),
    (lambda: SlotTracker(torch.nn.Linear(2, 2), "persistent"), CanvasTypeError),
])
def test_bad_construction(make, err):
    with pytest.raises(err):
        make()


@pytest.mark.parametrize("call", [
    lambda m: m(torch.randn(2, 5, 8)),
    lambda m: m(torch.randn(5, 32)),
    lambda m: m([[0.0] * 32]),
    lambda m: m(torch.randn(2, 5, 32), torch.randn(2, 3, 32)),
    lambda m: m(torch.randn(2, 5, 32), obs_mask=torch.ones(2, 4, dtype=torch.bool)),
])
def test_bad_inputs_name_the_shape(call):
    m = SlotBindingModule(32, 4)
    with pytest.raises(CanvasError) as info:
        call(m)
    assert "SlotBindingModule" in str(info.value)


def test_sizes_past_the_limits_are_refused_before_allocating():
    from canvas_core.errors import SizeLimitError
    from canvas_core.program import IdentitySpec

    with pytest.raises(SizeLimitError, match="n_slots = 1,000,000,000.*CANVAS_MAX_SLOTS"):
        SlotBindingModule(16, n_slots=10**9)
    with pytest.raises(SizeLimitError, match="d_model = 10,000,000.*CANVAS_MAX_WIDTH"):
        SlotBindingModule(10**7, 4)
    with pytest.raises(SizeLimitError, match="slot_capacity = 1,000,000,000"):
        IdentitySpec(slot_capacity=10**9)
