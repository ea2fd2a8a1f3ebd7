"""Identity binding in float16 and across inference_mode: no NaN from an all-masked sample, and a
tracker state kept under inference_mode stays usable by a later grad step."""

import pytest
import torch

from canvas_core.identity import SlotTracker
from canvas_plugin_identity.binding import CompetitiveSlotBinding, SlotBindingModule

torch.set_num_threads(1)


@pytest.mark.parametrize("cls", [SlotBindingModule, CompetitiveSlotBinding])
@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16, torch.float32])
def test_all_masked_sample_stays_finite_in_low_precision(cls, dt):
    torch.manual_seed(0)
    m = cls(8, 3, 2, birth_death=True).to(dt)
    obs = torch.randn(2, 4, 8, dtype=dt)
    mask = torch.tensor([[True] * 4, [False] * 4])
    res = m.bind(obs, obs_mask=mask)
    assert res.slots.dtype == dt
    assert torch.isfinite(res.raw_slots).all() and torch.isfinite(res.attn).all()
    assert torch.equal(res.attn[1], torch.zeros_like(res.attn[1]))


def test_tracker_state_from_inference_mode_then_a_grad_step():
    torch.manual_seed(0)
    tr = SlotTracker(SlotBindingModule(8, 3, 2))
    with torch.inference_mode():
        kept = tr.step(torch.randn(2, 4, 8)).state
    obs = torch.randn(2, 4, 8, requires_grad=True)
    out = tr.step(obs)
    out.slots.sum().backward()
    assert obs.grad is not None and torch.isfinite(obs.grad).all()
    ref = SlotTracker(tr.binder)(obs.detach(), kept.clone()).slots
    assert torch.equal(out.slots.detach(), ref)
