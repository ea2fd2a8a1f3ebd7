"""``canvas_engineering.cogvideox`` -> ``canvas_core.cogvideox``: names re-exported from the
optional CogVideoX plugin (install hint when it is missing)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

TINY = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8,
            text_embed_dim=16, num_layers=1, sample_width=8, sample_height=8, sample_frames=5,
            patch_size=2, max_text_seq_length=4)


def test_import_is_torch_free():
    subprocess.run([sys.executable, "-c", "import sys, canvas_core.cogvideox as m; dir(m); "
                    "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules"], check=True)


def test_attention_reexport():
    pytest.importorskip("canvas_plugin_cogvideox")
    from canvas_core.cogvideox import CogVideoXAttention

    import canvas_core

    assert CogVideoXAttention is canvas_core.CogVideoXAttention
    attn = canvas_core.create_attention("cogvideox", d_model=16, n_heads=2)
    assert isinstance(attn, CogVideoXAttention)
    q, kv = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    assert attn(q, kv, kv).shape == (2, 3, 16)


def test_looped_cogvideox_block_and_inner_dim():
    pytest.importorskip("canvas_plugin_cogvideox")
    diffusers = pytest.importorskip("diffusers")
    from canvas_core.cogvideox import CogVideoXAdapter, LoopedCogVideoXBlock, detect_inner_dim

    import canvas_core

    torch.manual_seed(0)
    model = diffusers.CogVideoXTransformer3DModel(**TINY).eval()
    assert detect_inner_dim(model) == 2 * 8
    assert CogVideoXAdapter.matches(model)
    block = model.transformer_blocks[0]
    looped = LoopedCogVideoXBlock(block, block_idx=0, max_loops=3, inner_dim=16)
    assert isinstance(looped, canvas_core.LoopedBlockWrapper)
    h, enc, temb = torch.randn(2, 12, 16), torch.randn(2, 4, 16), torch.randn(2, 8)
    with torch.no_grad():
        ref_h, ref_enc = block(h, enc, temb)
        out_h, out_enc = looped(h, enc, temb)
    # zero-init loop embeddings and gates: identical to the original block at every loop count
    torch.testing.assert_close(out_h, ref_h)
    torch.testing.assert_close(out_enc, ref_enc)
    looped.set_loops(2)
    assert looped.trainable_params() == 3 * 16 * 2 + 2  # one embedding per loop per stream + gates
    with torch.no_grad():
        looped.loop_emb.add_(1.0)  # a non-zero embedding changes what the block sees
        changed, _ = looped(h, enc, temb)
    assert not torch.allclose(changed, ref_h)


def test_missing_plugin_hint():
    code = ("import sys; sys.modules['canvas_plugin_cogvideox'] = None; sys.modules['canvas_plugin_cogvideox.adapter'] = None\n"
            "import canvas_core.cogvideox as m\n"
            "from canvas_core.errors import CanvasError\n"
            "try:\n    m.CogVideoXAdapter\nexcept CanvasError as e:\n    assert 'pip install canvas-plugin-cogvideox' in str(e), e\n"
            "else:\n    raise SystemExit('no error')\n"
            "assert not hasattr(m, 'CogVideoXAdapter')\n")
    subprocess.run([sys.executable, "-c", code], check=True)
