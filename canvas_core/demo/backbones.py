"""Tiny (or pretrained) backbones for the demo, and how to feed them the task's latent video.

Each :class:`DemoBackbone` knows how to build a tiny random-weight model of its family (or load a
local ``from_pretrained`` directory), how to turn a ``(B, F, C, H, W)`` latent video into the
model's inputs, and which canvas positions of the model's token grid the demo's program uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from canvas_core.errors import BackboneError, UnknownNameError

__all__ = ["DemoBackbone", "BACKBONES", "get_backbone"]


@dataclass
class DemoBackbone:
    """How the demo drives one backbone family.

    ``build(seed)`` makes the tiny model, ``load(path)`` a pretrained one, ``inputs(video, seed)``
    the forward kwargs, ``output(model, kwargs)`` the tensor the action head reads, ``regions``
    maps the token layout to the program's ``video`` / ``action`` / ``reward`` regions.
    """

    name: str
    plugin: str
    build: Callable[[int], nn.Module]
    load: Callable[[Path], nn.Module]
    inputs: Callable[[nn.Module, torch.Tensor, int], Dict[str, Any]]
    output: Callable[[nn.Module, Dict[str, Any]], torch.Tensor]
    regions: Callable[[Any], Dict[str, tuple]]
    channels: Callable[[nn.Module], int] = lambda model: int(model.config["in_channels"])


# ------------------------------------------------------------------ CogVideoX
COGVIDEOX_TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                      time_embed_dim=16, text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8,
                      sample_frames=13, patch_size=2, max_text_seq_length=4)


def _cog_build(seed: int) -> nn.Module:
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(**COGVIDEOX_TINY)


def _load_diffusers(cls_path: str) -> Callable[[Path], nn.Module]:
    def load(path: Path) -> nn.Module:
        import importlib

        module, _, name = cls_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        sub = "transformer" if (path / "transformer" / "config.json").exists() else None
        if sub is None and not (path / "config.json").exists():
            raise BackboneError(f"--pretrained {str(path)!r} has no config.json (nor transformer/config.json); "
                                f"give a directory written by {name}.save_pretrained")
        try:
            return cls.from_pretrained(str(path), subfolder=sub)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise BackboneError(f"--pretrained {str(path)!r} could not be loaded as a {name}: {exc}; "
                                f"give a directory written by {name}.save_pretrained") from exc
    return load


def _text(model: nn.Module, batch: int, seed: int, length_key: str) -> torch.Tensor:
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, cfg[length_key], cfg["text_embed_dim"], generator=g).expand(batch, -1, -1)


def _cog_inputs(model: nn.Module, video: torch.Tensor, seed: int) -> Dict[str, Any]:
    B = video.shape[0]
    return dict(hidden_states=video, encoder_hidden_states=_text(model, B, seed, "max_text_seq_length").to(video),
                timestep=torch.full((B,), 500, dtype=torch.long, device=video.device))


def _sample(model: nn.Module, kwargs: Dict[str, Any]) -> torch.Tensor:
    return model(**kwargs).sample


def _text_grid_regions(tokens: Any) -> Dict[str, tuple]:
    video = tokens.layout.region_spec("video").bounds
    text = tokens.layout.region_spec("text").bounds
    t0, _, r0, _, c0, c1 = text
    if c1 - c0 < 3:
        raise BackboneError("the demo needs at least 3 text tokens (2 action + 1 reward)")
    return {"video": video, "action": (t0, t0 + 1, r0, r0 + 1, c0, c0 + 2), "reward": (t0, t0 + 1, r0, r0 + 1, c0 + 2, c0 + 3)}


# ------------------------------------------------------------------ Mochi
MOCHI_TINY = dict(patch_size=2, num_attention_heads=2, attention_head_dim=16, num_layers=2,
                  pooled_projection_dim=12, in_channels=4, text_embed_dim=16, time_embed_dim=16,
                  max_sequence_length=4)


def _mochi_build(seed: int) -> nn.Module:
    from diffusers import MochiTransformer3DModel

    torch.manual_seed(seed)
    model = MochiTransformer3DModel(**MOCHI_TINY)
    with torch.no_grad():  # diffusers initialises Mochi's RoPE frequencies to 0
        model.pos_frequencies.normal_()
    return model


def _mochi_inputs(model: nn.Module, video: torch.Tensor, seed: int) -> Dict[str, Any]:
    B = video.shape[0]
    text = _text(model, B, seed, "max_sequence_length").to(video)
    return dict(hidden_states=video.permute(0, 2, 1, 3, 4), encoder_hidden_states=text,
                timestep=torch.full((B,), 500, dtype=torch.long, device=video.device),
                encoder_attention_mask=torch.ones(B, text.shape[1], device=video.device))


def _mochi_output(model: nn.Module, kwargs: Dict[str, Any]) -> torch.Tensor:
    return model(**kwargs).sample.permute(0, 2, 1, 3, 4)  # back to (B, F, C, H, W)


# ------------------------------------------------------------------ timm ViT
def _vit_build(seed: int) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             embed_dim=32, num_heads=2, num_classes=0, in_chans=4)


def _vit_load(path: Path) -> nn.Module:
    import timm

    weights = path / "model.safetensors"
    if not weights.exists():
        raise BackboneError(f"--pretrained {str(path)!r}: for vit, give a directory with model.safetensors "
                            "(timm weights of vit_tiny_patch16_224 at img_size=32, patch_size=8, in_chans=4)")
    return timm.create_model("vit_tiny_patch16_224", pretrained=True, img_size=32, patch_size=8, depth=2,
                             embed_dim=32, num_heads=2, num_classes=0, in_chans=4,
                             pretrained_cfg_overlay=dict(file=str(weights)))


def _vit_inputs(model: nn.Module, video: torch.Tensor, seed: int) -> Dict[str, Any]:
    # frames side by side as a 2x2 mosaic of the first channel, upsampled to the ViT's 32x32
    B, F, C, H, W = video.shape
    frames = video[:, :4, 0]
    if F < 4:
        frames = torch.cat([frames, frames[:, -1:].expand(B, 4 - F, H, W)], 1)
    mosaic = torch.cat([torch.cat([frames[:, 0], frames[:, 1]], -1), torch.cat([frames[:, 2], frames[:, 3]], -1)], -2)
    img = torch.nn.functional.interpolate(mosaic.unsqueeze(1), size=(32, 32), mode="nearest")
    return dict(x=img.expand(B, 4, 32, 32).contiguous())


def _vit_output(model: nn.Module, kwargs: Dict[str, Any]) -> torch.Tensor:
    return model.forward_features(kwargs["x"])  # (B, tokens, D): the head pools over tokens


def _vit_regions(tokens: Any) -> Dict[str, tuple]:
    patches = tokens.layout.region_spec("patches").bounds
    cls = tokens.layout.region_spec("cls").bounds
    return {"video": patches, "action": (cls[0], cls[1], cls[2], cls[2] + 1, cls[4], cls[4] + 1)}


BACKBONES: Dict[str, DemoBackbone] = {
    "cogvideox": DemoBackbone("cogvideox", "canvas-plugin-cogvideox", _cog_build,
                              _load_diffusers("diffusers.CogVideoXTransformer3DModel"), _cog_inputs, _sample,
                              _text_grid_regions),
    "mochi": DemoBackbone("mochi", "canvas-plugin-mochi", _mochi_build,
                          _load_diffusers("diffusers.MochiTransformer3DModel"), _mochi_inputs, _mochi_output,
                          _text_grid_regions),
    "vit": DemoBackbone("vit", "canvas-plugin-vit", _vit_build, _vit_load, _vit_inputs, _vit_output, _vit_regions,
                        channels=lambda model: 4),  # the mosaic uses channel 0 only
}


def get_backbone(name: str) -> DemoBackbone:
    """The demo recipe for backbone ``name``; its plugin must be installed."""
    from canvas_core.plugins import list_backbones

    installed = list_backbones()
    if name not in BACKBONES:
        usable = [n for n in sorted(BACKBONES) if n in installed]
        missing = [BACKBONES[n].plugin for n in sorted(BACKBONES) if n not in installed]
        hint = f"; pip install {' '.join(missing)} for the others" if missing else ""
        raise UnknownNameError(
            f"unknown demo backbone {name!r}; the demo runs on {sorted(BACKBONES)} "
            f"(installed backbone plugins: {usable or 'none'}{hint})")
    if name not in installed:
        raise UnknownNameError(
            f"backbone {name!r} is not installed (installed backbone plugins: {installed or 'none'}); "
            f"pip install {BACKBONES[name].plugin}")
    return BACKBONES[name]


def model_inputs(recipe: DemoBackbone, model: nn.Module, video: torch.Tensor, seed: int = 0,
                 device: Optional[str] = None) -> Dict[str, Any]:
    """Forward kwargs for ``video`` (moved to ``device`` when given)."""
    if device is not None:
        video = video.to(device)
    return recipe.inputs(model, video, seed)
