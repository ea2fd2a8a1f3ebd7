"""The fused path's autocast check is meta-safe: torch.is_autocast_enabled('meta') raises, so a
mamba module on the meta device (shape inference) must still run with the fused path on."""

from __future__ import annotations

import torch

from canvas_core import create_attention
from canvas_plugin_mamba import module as mamba_module

torch.set_num_threads(1)


def test_fused_path_runs_on_the_meta_device(monkeypatch):
    monkeypatch.setattr(mamba_module, "_FUSE_EAGER", True)
    with torch.device("meta"):
        m = create_attention("mamba", d_model=16, n_heads=2)
        q = torch.randn(2, 5, 16)
    out = m(q, q, q)
    assert out.shape == (2, 5, 16) and out.device.type == "meta"


def test_autocast_still_turns_the_fused_path_off():
    m = create_attention("mamba", d_model=16, n_heads=2)
    x = torch.randn(1, 3, 16)
    assert m._one_dtype(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not m._one_dtype(x)
    assert m._one_dtype(torch.randn(1, 3, 16, device="meta"))  # no autocast on meta: answers, never raises
