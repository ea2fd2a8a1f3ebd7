"""``update="damped"`` is the backbone at 1 loop and, by design, not beyond (a fixed step, no
zero-started parameter); docs/looping.md says so where it compares the updates."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import canvas_core
from canvas_core.looping import graft_looped_blocks
from tests.looping._scope_setup import make_net

DOC = Path(__file__).resolve().parents[2] / "docs" / "looping.md"


@pytest.mark.parametrize("damping", [0.25, 1.0])
def test_damped_is_the_backbone_at_one_loop_only(damping):
    m = make_net()
    ref = copy.deepcopy(m)
    x = torch.randn(2, 4, 3)
    graft_looped_blocks(m, max_loops=3, scope=(0, 2), update="damped", damping=damping, latent_channels=3)
    with torch.no_grad():
        want = ref(x)
        canvas_core.set_loops(m, 1)
        assert torch.equal(m(x), want)
        for n in (2, 3):
            canvas_core.set_loops(m, n)
            assert (m(x) - want).abs().max() > 1e-4


def test_the_docs_say_damped_differs_beyond_one_loop_by_design():
    text = " ".join(DOC.read_text().split())
    assert 'For `"damped"` this is by design' in text
    assert "at 1 loop the model is the backbone exactly and from 2 loops on" in text
