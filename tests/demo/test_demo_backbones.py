"""The demo's backbone recipes on configurations other than the built-in tiny ones: pretrained
directories of other shapes (RoPE, CogVideoX 1.5 patching, narrow grids, any timm ViT), inputs
built as the real pipelines build them, and clear refusals."""

from __future__ import annotations

import pytest
import torch

from canvas_core.errors import BackboneError, CanvasError

diffusers = pytest.importorskip("diffusers")
timm = pytest.importorskip("timm")

COG = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
           text_embed_dim=16, num_layers=1, sample_width=8, sample_height=8, sample_frames=13, patch_size=2,
           max_text_seq_length=4)


def _run(tmp_path, backbone, pretrained):
    from canvas_core.demo.pipeline import DemoConfig, run_demo

    return run_demo(DemoConfig(backbone=backbone, steps=2, batch_size=2, eval_samples=4, out=tmp_path / "out",
                               progress=False, pretrained=pretrained), log=lambda _: None)


@pytest.mark.parametrize("cfg", [dict(COG, use_rotary_positional_embeddings=True),
                                 dict(COG, use_rotary_positional_embeddings=True, patch_size_t=2, sample_width=12)],
                         ids=["1.0-rope", "1.5-rope"])
def test_cogvideox_rotary_embedding_is_the_pipelines(cfg):
    pipeline = pytest.importorskip("diffusers.pipelines.cogvideo.pipeline_cogvideox")
    from types import SimpleNamespace

    from canvas_core.demo.backbones import BACKBONES, model_inputs

    model = diffusers.CogVideoXTransformer3DModel(**cfg)
    video = torch.randn(2, 4, 4, 8, 8)
    kwargs = model_inputs(BACKBONES["cogvideox"], model, video)
    fake = SimpleNamespace(vae_scale_factor_spatial=1, transformer=model)  # latent pixels in, latent pixels out
    want = pipeline.CogVideoXPipeline._prepare_rotary_positional_embeddings(fake, 8, 8, 4, torch.device("cpu"))
    assert torch.equal(kwargs["image_rotary_emb"][0], want[0]) and torch.equal(kwargs["image_rotary_emb"][1], want[1])
    with torch.no_grad():  # and the model runs with it (its sequence length matches)
        assert model(**kwargs).sample.shape == (2, 4, 4, 8, 8)


def test_cogvideox_without_rope_gets_no_rotary_embedding():
    from canvas_core.demo.backbones import BACKBONES, model_inputs

    model = diffusers.CogVideoXTransformer3DModel(**COG)
    assert "image_rotary_emb" not in model_inputs(BACKBONES["cogvideox"], model, torch.randn(1, 4, 4, 8, 8))


@pytest.mark.parametrize("cfg, shape", [
    (dict(COG, patch_size=3, patch_size_t=3, use_rotary_positional_embeddings=True, sample_width=9,
          sample_height=9), (6, 9, 9)),  # whole patches in time and space
    (dict(COG, use_learned_positional_embeddings=True, use_rotary_positional_embeddings=True, sample_width=12,
          sample_height=6), (4, 6, 12)),  # learned positions: only the trained size runs
    (dict(COG, patch_size=8, max_text_seq_length=3), (4, 8, 8)),  # a 1-token-wide grid
    (dict(COG, patch_size=4, max_text_seq_length=5), (4, 8, 8)),  # 2 text tokens per row
])
def test_cogvideox_pretrained_of_other_shapes_runs_the_demo(tmp_path, cfg, shape):
    from canvas_core.demo.backbones import BACKBONES

    model = diffusers.CogVideoXTransformer3DModel(**cfg)
    assert BACKBONES["cogvideox"].video_shape(model) == shape
    model.save_pretrained(str(tmp_path / "ckpt"))
    res = _run(tmp_path, "cogvideox", tmp_path / "ckpt")
    assert res.checkpoint.exists() and res.total_params == sum(p.numel() for p in model.parameters())


def test_pretrained_directory_of_another_family_is_refused(tmp_path):
    diffusers.CogVideoXTransformer3DModel(**COG).save_pretrained(str(tmp_path / "cog"))
    with pytest.raises(BackboneError, match="holds a CogVideoXTransformer3DModel, not a MochiTransformer3DModel"):
        _run(tmp_path, "mochi", tmp_path / "cog")


def test_timm_vit_directory_with_config_runs_the_demo(tmp_path):
    from timm.models import save_for_hf

    # another image size, 2 input channels, a class token and 2 register tokens, 3 blocks
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=48, patch_size=8, depth=3,
                            embed_dim=48, num_heads=3, num_classes=0, in_chans=2, reg_tokens=2)
    save_for_hf(vit, str(tmp_path / "vit"), safe_serialization=True)
    res = _run(tmp_path, "vit", tmp_path / "vit")
    assert res.total_params == sum(p.numel() for p in vit.parameters())
    assert res.trainable_params > 3 * (3 * 48 + 2)


def test_vit_weights_of_another_config_without_config_json_are_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=3,
                            embed_dim=48, num_heads=2, num_classes=0, in_chans=4)
    (tmp_path / "vit").mkdir()
    save_file(vit.state_dict(), str(tmp_path / "vit" / "model.safetensors"))
    with pytest.raises(CanvasError, match="could not be loaded as a timm ViT"):
        _run(tmp_path, "vit", tmp_path / "vit")


def test_vit_without_prefix_tokens_is_a_clear_error():
    from canvas_core.demo.backbones import BACKBONES
    from canvas_core.looping import get_adapter, graft_looped_blocks

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                            embed_dim=32, num_heads=2, num_classes=0, class_token=False, global_pool="avg")
    graft_looped_blocks(vit, max_loops=1)
    tokens = get_adapter(vit).token_layout(vit)
    with pytest.raises(BackboneError, match="no prefix tokens"):
        BACKBONES["vit"].regions(tokens)
