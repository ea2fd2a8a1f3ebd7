"""Sharpening asked for on blocks whose attention canvas-core cannot reach says why and what to do,
instead of telling a model already grafted through its adapter to graft through an adapter."""

from __future__ import annotations

import pytest
import torch

import canvas_core as cc
from canvas_core.errors import BackboneError

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import ParallelScalingBlock, VisionTransformer  # noqa: E402

torch.set_num_threads(1)


def _vit() -> torch.nn.Module:
    return VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2,
                             block_fn=ParallelScalingBlock)


@pytest.mark.parametrize("scope, why", [
    ("block", r"no attention exposing an inverse temperature `beta`: .*ParallelScalingBlock does it inline\)\. "
              r"Graft without sharpening="),
    ((0, 2), r"blocks 0\.\.1, and VisionTransformer's have none \(adapter 'vit' installs no canvas attention there\); "
             r"drop sharpening="),
])
def test_inline_attention_blocks_refuse_sharpening_with_the_reason(scope, why) -> None:
    m = _vit()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(BackboneError, match=why) as info:
        cc.graft_looped_blocks(m, max_loops=2, scope=scope, sharpening=cc.SharpeningSchedule())
    assert not any("canvas" in type(b).__name__.lower() or "looped" in type(b).__name__.lower() for b in m.blocks)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert "graft it through an adapter" not in str(info.value)
