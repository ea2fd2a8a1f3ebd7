"""SlotBindingModule / CompetitiveSlotBinding: masked-out NaN padding rows and dropout validation
(hostile-sweep regressions)."""

from __future__ import annotations

import math

import pytest
import torch

from canvas_core.errors import CanvasTypeError
from canvas_plugin_identity.binding import CompetitiveSlotBinding, SlotBindingModule

BINDERS = [SlotBindingModule, CompetitiveSlotBinding]


@pytest.mark.parametrize("cls", BINDERS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_masked_out_non_finite_rows_do_not_reach_the_slots(cls, bad):
    torch.manual_seed(0)
    m = cls(16, 3, 4, birth_death=True)
    obs = torch.randn(2, 5, 16)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 0, 1, 1, 0]], dtype=torch.bool)
    poisoned = obs.clone()
    poisoned[~mask] = bad
    clean = m.bind(obs, obs_mask=mask)
    res = m.bind(poisoned, obs_mask=mask)
    for a, b in zip((res.slots, res.raw_slots, res.attn, res.alive_logits),
                    (clean.slots, clean.raw_slots, clean.attn, clean.alive_logits)):
        assert torch.isfinite(a).all()
        assert torch.equal(a, b)
    # gradients stay finite too, and none flows into the padding rows
    x = poisoned.clone().requires_grad_(True)
    m.bind(x, obs_mask=mask).raw_slots.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad[~mask] == 0).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


@pytest.mark.parametrize("cls", BINDERS)
def test_masking_a_row_equals_dropping_it(cls):
    torch.manual_seed(1)
    m = cls(16, 3, 4)
    obs = torch.randn(1, 5, 16)
    mask = torch.tensor([[1, 1, 0, 1, 0]], dtype=torch.bool)
    obs[~mask] = float("nan")
    torch.testing.assert_close(m(obs, obs_mask=mask), m(obs[:, mask[0]]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", BINDERS)
@pytest.mark.parametrize("dropout", [2.0, -0.1, 1.5, float("nan"), float("inf"), "0.1", None, True, [0.1]])
def test_bad_dropout_is_refused_at_construction(cls, dropout):
    with pytest.raises(CanvasTypeError, match="dropout") as exc:
        cls(16, 2, dropout=dropout)
    assert cls.__name__ in str(exc.value) and "dropout=" in str(exc.value)


@pytest.mark.parametrize("dropout", [0, 0.0, 0.5, 1, 1.0])
def test_valid_dropout_is_accepted(dropout):
    m = SlotBindingModule(16, 2, dropout=dropout)
    assert m.dropout == float(dropout) and not math.isnan(m.dropout)
    m.train()
    assert torch.isfinite(m(torch.randn(1, 3, 16))).all()
