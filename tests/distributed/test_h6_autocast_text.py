"""The autocast state the sequence-parallel ranks compare comes from the one autocast probe of the
attention modules (``canvas_core.attention._base.autocast_on``), so both agree on every torch and
device type; no process group needed."""

from __future__ import annotations

import torch

from canvas_core.runtime import sp_agreement


def test_the_autocast_state_follows_autocast_on(monkeypatch):
    x = torch.zeros(1, 2, dtype=torch.float32)
    assert sp_agreement._autocast_text(x) == "no autocast (tensors exchanged as float32)"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert sp_agreement._autocast_text(x) == "autocast to bfloat16"
    asked = []
    monkeypatch.setattr(sp_agreement, "autocast_on", lambda kind: asked.append(kind) or False)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the probe's answer is the one used
        assert sp_agreement._autocast_text(x) == "no autocast (tensors exchanged as float32)"
    assert asked == ["cpu"]


def test_a_device_type_autocast_does_not_know_is_no_autocast():
    x = torch.empty(1, 2, dtype=torch.float16, device="meta")
    assert sp_agreement._autocast_text(x) == "no autocast (tensors exchanged as float16)"
