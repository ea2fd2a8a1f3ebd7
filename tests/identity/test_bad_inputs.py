"""Reliability: bad inputs to identity binders (the plugin packages' part of this audit is
tests/plugins/test_plugin_packages_bad_inputs.py)."""

from __future__ import annotations

import pytest
import torch

from canvas_core.errors import CanvasTypeError, ShapeError, UnknownRegionError
from canvas_core.identity import IdentityBinders, SlotTracker, build_identity_binders, create_binder
from canvas_core.program import IdentitySpec
from canvas_core.schema import CanvasLayout, RegionSpec


class _RP:
    identity = IdentitySpec()


def _binders():
    return build_identity_binders({"a": _RP()}, 8)


def test_binder_dtype_device_and_batch_checks():
    t = SlotTracker(create_binder("cross_attention", 8, 4))
    obs = torch.randn(2, 5, 8)
    with pytest.raises(ShapeError, match="module's parameters"):
        t(obs.double())
    with pytest.raises(ShapeError, match="floating"):
        t(obs.long())
    with pytest.raises(ShapeError, match="obs_mask is on meta"):
        t(obs, None, torch.ones(2, 5, dtype=torch.bool, device="meta"))
    with pytest.raises(CanvasTypeError, match="batch_size"):
        t.init_state("x")
    with pytest.raises(CanvasTypeError, match="batch_size"):
        t.init_state(-1)
    assert t(obs).slots.shape == (2, 4, 8)


def test_identity_binders_bad_calls():
    ib = _binders()
    with pytest.raises(CanvasTypeError, match="observations must be a mapping"):
        ib(torch.randn(2, 5, 8))
    with pytest.raises(CanvasTypeError, match="tracker must be a SlotTracker"):
        ib.add("x", 3, IdentitySpec())
    with pytest.raises(CanvasTypeError, match="spec must be an IdentitySpec"):
        IdentityBinders().add("x", SlotTracker(create_binder("cross_attention", 8, 4)), "persistent")


def test_bind_canvas_checks_layout_and_size():
    ib = _binders()
    lay = CanvasLayout(T=2, d_model=8, spatial_shape=(2, 2), regions={"a": RegionSpec((0, 2, 0, 1, 0, 2))})
    with pytest.raises(CanvasTypeError, match="layout must be the CanvasLayout"):
        ib.bind_canvas(torch.randn(2, 8, 8), None)
    with pytest.raises(ShapeError, match=r"x must be \(B, 8, 8\)"):
        ib.bind_canvas(torch.randn(2, 5, 8), lay)
    other = CanvasLayout(T=2, d_model=8, spatial_shape=(2, 2), regions={"b": RegionSpec((0, 2, 0, 1, 0, 2))})
    with pytest.raises(UnknownRegionError, match=r"\['a'\]"):
        ib.bind_canvas(torch.randn(2, 8, 8), other)
    slots, states = ib.bind_canvas(torch.randn(2, 8, 8), lay)
    assert slots["a"].shape[:2] == (2, 2)
    with pytest.raises(UnknownRegionError, match=r"states name region\(s\) \['b'\] that have no identity binder"):
        ib.bind_canvas(torch.randn(2, 8, 8), lay, states={"b": states["a"]})  # a typo: ignored before


@pytest.mark.parametrize("env, fix", [({"CANVAS_BLOCK_PLUGINS": "identity"}, "remove it from CANVAS_BLOCK_PLUGINS"),
                                      ({"CANVAS_DISABLE_PLUGIN_AUTOLOAD": "1"}, "unset CANVAS_DISABLE_PLUGIN_AUTOLOAD")])
def test_a_blocked_identity_plugin_is_named_as_blocked_not_missing(env, fix):
    import os
    import subprocess
    import sys

    code = ("from canvas_core.errors import PluginLoadError\n"
            "try:\n    from canvas_core.identity import SlotBindingModule\n"
            "except PluginLoadError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=120).stdout
    assert fix in out and "pip install" not in out, out
