"""A slot-binding module built directly (not through create_binder) refuses a slot bank over the
byte limit before allocating it."""

from __future__ import annotations

import pytest

import canvas_core  # noqa: F401  (loads the plugin's types)
from canvas_core.errors import SizeLimitError
from canvas_plugin_identity.binding import SlotBindingModule


def test_a_direct_slot_bank_over_the_byte_limit_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("CANVAS_MAX_BYTES", "200000")  # a (64, 8) binder: ~135 KB of parameters in all
    assert SlotBindingModule(d_model=64, n_slots=8).n_slots == 8
    with pytest.raises(SizeLimitError, match=r"SlotBindingModule\(d_model=64, n_slots=1,024\): its float32 "
                                             r"parameters.*fewer slots \(n_slots\).*CANVAS_MAX_BYTES"):
        SlotBindingModule(d_model=64, n_slots=1024)
