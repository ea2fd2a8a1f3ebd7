"""t19: the kit's ``deterministic`` property reads its two checks (identical calls agree; the same
inputs agree after a call with other inputs) off one set of five calls, and ``key_mask respected``
reuses the dependencies of ``dependency exactness`` for a forward without ``key_mask`` (the same
call); the checks still fail what they failed."""

from __future__ import annotations

import pytest
import torch
from torch.nn.modules.module import register_module_forward_hook

import canvas_core.testing.attention as kit
from canvas_core.testing import check_attention_type
from tests._hostile_types import CallCounter, KeepsState, PlainSoftmax

torch.set_num_threads(1)


def _calls_per_property(monkeypatch, cls, props):
    """Forward calls of ``cls`` modules made inside each of the kit's functions named in ``props``."""
    counts = {name: 0 for name in props}
    inside = []
    for name in props:
        fn = getattr(kit, name)

        def counted(*a, fn=fn, name=name, **kw):
            inside.append(name)
            try:
                return fn(*a, **kw)
            finally:
                inside.pop()
        monkeypatch.setattr(kit, name, counted)

    def hook(module, args, out):
        if type(module) is cls and inside:
            counts[inside[-1]] += 1
    handle = register_module_forward_hook(hook)
    try:
        report = check_attention_type(cls, d_model=16, raise_on_failure=False)
    finally:
        handle.remove()
    return report, counts


def test_deterministic_makes_five_calls_and_one_of_a_fresh_module(monkeypatch):
    report, counts = _calls_per_property(monkeypatch, PlainSoftmax, ["_deterministic", "check_direct_mask"])
    assert report.ok, report.summary()
    assert counts["_deterministic"] == 6, counts  # was 8: two identical calls, then the state check's own five
    assert counts["check_direct_mask"] == 0, counts  # a forward without key_mask: dependency exactness' probe


@pytest.mark.parametrize("cls, said", [(CallCounter, "two identical calls"), (KeepsState, "keeps state between calls")])
def test_the_shared_calls_still_fail_what_they_failed(cls, said):
    report = check_attention_type(cls, d_model=16, raise_on_failure=False)
    assert said in report.failed.get("deterministic", ""), report.summary()
    assert "call counter" in report.failed["deterministic"] or cls is KeepsState
