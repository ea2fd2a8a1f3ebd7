"""Tiny (or pretrained) backbones for the demo, and how to feed them the task's latent video.

Each :class:`DemoBackbone` knows how to build a tiny random-weight model of its family (or load a
local ``from_pretrained`` directory), how to turn a ``(B, F, C, H, W)`` latent video into the
model's inputs, and which canvas positions of the model's token grid the demo's program uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from canvas_core.demo.pretrained_checks import diffusers_weight_files, refuse_partial_load, vit_dropped_head
from canvas_core.errors import BackboneError, UnknownNameError

__all__ = ["DemoBackbone", "BACKBONES", "get_backbone"]


@dataclass
class DemoBackbone:
    """How the demo drives one backbone family.

    ``build(seed)`` makes the tiny model, ``load(path)`` a pretrained one, ``inputs(video, seed)``
    the forward kwargs, ``output(model, kwargs)`` the tensor the action head reads, ``regions``
    maps the token layout to the program's ``video`` / ``action`` / ``reward`` regions,
    ``video_shape(model)`` the task's latent video ``(frames, height, width)`` the model accepts.
    """

    name: str
    plugin: str
    build: Callable[[int], nn.Module]
    load: Callable[[Path], nn.Module]
    inputs: Callable[[nn.Module, torch.Tensor, int], Dict[str, Any]]
    output: Callable[[nn.Module, Dict[str, Any]], torch.Tensor]
    regions: Callable[[Any], Dict[str, tuple]]
    channels: Callable[[nn.Module], int] = lambda model: int(model.config["in_channels"])
    video_shape: Callable[[nn.Module], Tuple[int, int, int]] = lambda model: (4, 8, 8)


def _round_up(n: int, k: int) -> int:
    return k * -(-n // k)


def _diffusers_video_shape(model: nn.Module) -> Tuple[int, int, int]:
    """4 frames of 8 x 8 latents, rounded up to whole patches (``patch_size``, ``patch_size_t``);
    a model with learned positional embeddings gets its trained ``sample_height/width``."""
    cfg = model.config
    p, pt = int(cfg["patch_size"]), cfg.get("patch_size_t") or 1
    if cfg.get("use_learned_positional_embeddings"):
        return _round_up(4, pt), int(cfg["sample_height"]), int(cfg["sample_width"])
    return _round_up(4, pt), _round_up(8, p), _round_up(8, p)


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

        import json

        module, _, name = cls_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        sub = "transformer" if (path / "transformer" / "config.json").exists() else None
        if sub is None and not (path / "config.json").exists():
            raise BackboneError(f"--pretrained {str(path)!r} has no config.json (nor transformer/config.json); "
                                f"give a directory written by {name}.save_pretrained")
        config = path / (sub or "") / "config.json"
        try:
            saved = json.loads(config.read_text()).get("_class_name")
        except (OSError, ValueError, AttributeError) as exc:
            raise BackboneError(f"--pretrained {str(path)!r}: {config} is not a readable JSON config ({exc}); "
                                f"give a directory written by {name}.save_pretrained") from None
        if saved is not None and saved != name:
            raise BackboneError(f"--pretrained {str(path)!r} holds a {saved}, not a {name}; "
                                "choose the matching --backbone or another directory")
        # low_cpu_mem_usage=False: the same weights, without asking for `accelerate`; safetensors only:
        # a .bin written with safe_serialization=False would be unpickled
        try:
            model = cls.from_pretrained(str(path), subfolder=sub, low_cpu_mem_usage=False, use_safetensors=True)
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise BackboneError(f"--pretrained {str(path)!r} could not be loaded as a {name}: {exc}; "
                                f"give a directory written by {name}.save_pretrained (safetensors weights, its "
                                "default: pickled .bin weights are not read)") from exc
        folder = path / (sub or "")
        refuse_partial_load(model, diffusers_weight_files(folder), f"--pretrained {str(path)!r}",
                            f"{config} must describe the architecture the weights were saved from (e.g. its "
                            f"num_layers): write the directory again with {name}.save_pretrained, or correct config.json")
        _attach_prompt(model, folder / "prompt.safetensors")
        return model
    return load


def _attach_prompt(model: nn.Module, file: Path) -> None:
    """A ``prompt.safetensors`` next to the weights (written by ``scripts/pretrain_backbone.py``)
    holds the prompt embeddings the backbone was pretrained with; the demo then feeds that prompt."""
    if not file.exists():
        return
    from safetensors.torch import load_file

    try:
        prompt = load_file(str(file))["prompt"]
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise BackboneError(f"{str(file)!r} is not a prompt file written by scripts/pretrain_backbone.py ({exc}); "
                            "remove it or write it again") from None
    cfg = model.config
    length = cfg.get("max_text_seq_length") or cfg.get("max_sequence_length")
    if tuple(prompt.shape) != (length, cfg["text_embed_dim"]):
        raise BackboneError(f"{str(file)!r} holds a prompt of shape {tuple(prompt.shape)}, but the model takes "
                            f"({length}, {cfg['text_embed_dim']}); remove it or write it again")
    model.demo_prompt = prompt


def _text(model: nn.Module, batch: int, seed: int, length_key: str) -> torch.Tensor:
    """The prompt embeddings: the prompt learned with a pretrained demo backbone (``demo_prompt``),
    else a fixed random one drawn from ``seed``."""
    prompt = getattr(model, "demo_prompt", None)
    if prompt is not None:
        return prompt.unsqueeze(0).expand(batch, -1, -1)
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, cfg[length_key], cfg["text_embed_dim"], generator=g).expand(batch, -1, -1)


def _crop_region(h: int, w: int, tw: int, th: int) -> tuple:
    """diffusers' ``get_resize_crop_region_for_grid`` (CogVideoX pipeline) for grid ``(h, w)``."""
    if h / w > th / tw:
        rh, rw = th, int(round(th / h * w))
    else:
        rw, rh = tw, int(round(tw / w * h))
    top, left = int(round((th - rh) / 2.0)), int(round((tw - rw) / 2.0))
    return (top, left), (top + rh, left + rw)


def _cog_rotary(model: nn.Module, video: torch.Tensor) -> Optional[tuple]:
    """``image_rotary_emb`` ``(cos, sin)`` each ``(F' H' W', head_dim)`` exactly as diffusers'
    CogVideoX pipeline builds it (the model does not make its own), or None without RoPE."""
    cfg = model.config
    if not cfg.get("use_rotary_positional_embeddings"):
        return None
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    _, F, _, H, W = video.shape
    p, pt = cfg["patch_size"], cfg.get("patch_size_t")
    gh, gw = H // p, W // p
    bw, bh = cfg["sample_width"] // p, cfg["sample_height"] // p
    if pt is None:  # CogVideoX 1.0
        cos, sin = get_3d_rotary_pos_embed(embed_dim=cfg["attention_head_dim"], crops_coords=_crop_region(gh, gw, bw, bh),
                                           grid_size=(gh, gw), temporal_size=F, device=video.device)
    else:  # CogVideoX 1.5
        cos, sin = get_3d_rotary_pos_embed(embed_dim=cfg["attention_head_dim"], crops_coords=None, grid_size=(gh, gw),
                                           temporal_size=(F + pt - 1) // pt, grid_type="slice", max_size=(bh, bw),
                                           device=video.device)
    return cos.to(video.dtype), sin.to(video.dtype)


def _cog_inputs(model: nn.Module, video: torch.Tensor, seed: int) -> Dict[str, Any]:
    B = video.shape[0]
    kwargs = dict(hidden_states=video, encoder_hidden_states=_text(model, B, seed, "max_text_seq_length").to(video),
                  timestep=torch.full((B,), 500, dtype=torch.long, device=video.device))
    rope = _cog_rotary(model, video)
    if rope is not None:
        kwargs["image_rotary_emb"] = rope
    if model.config.get("ofs_embed_dim"):  # CogVideoX 1.5 I2V: the pipeline's ofs is 2.0
        kwargs["ofs"] = torch.full((B,), 2.0, device=video.device, dtype=video.dtype)
    return kwargs


def _sample(model: nn.Module, kwargs: Dict[str, Any]) -> torch.Tensor:
    return model(**kwargs).sample


def _cog_readout(model: nn.Module, kwargs: Dict[str, Any]) -> torch.Tensor:
    """Final hidden states ``(B, 3, D)`` of the prompt tokens that carry the program's action (0-1)
    and reward (2): the text stream as the last transformer block returns it."""
    store: Dict[str, torch.Tensor] = {}

    def keep(module: nn.Module, args: Any, out: Any) -> None:
        store["text"] = out[1]

    handle = model.transformer_blocks[-1].register_forward_hook(keep)
    try:
        model(**kwargs)
    finally:
        handle.remove()
    return store["text"][:, :3]


def _text_grid_regions(tokens: Any) -> Dict[str, tuple]:
    """``action`` on text tokens 0-1 and ``reward`` on text token 2 (text token j sits at row
    ``r0 + j // w``, column ``j % w`` of the text rows, ``w`` the grid width)."""
    regions = tokens.layout.regions
    L = int(tokens.info.get("text_len", 0))
    if "text" not in regions or L < 3:
        raise BackboneError(f"the demo needs at least 3 text tokens (2 action + 1 reward); this model's prompt has "
                            f"{L} (raise max_text_seq_length / max_sequence_length in its config)")
    video = tokens.layout.region_spec("video").bounds
    t0, _, r0, _, c0, c1 = tokens.layout.region_spec("text").bounds
    w = c1 - c0
    action = (t0, t0 + 1, r0, r0 + 1, c0, c0 + 2) if w >= 2 else (t0, t0 + 1, r0, r0 + 2, c0, c0 + 1)
    rr, rc = r0 + 2 // w, c0 + 2 % w
    return {"video": video, "action": action, "reward": (t0, t0 + 1, rr, rr + 1, rc, rc + 1)}


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
    """A timm directory with ``config.json`` (``timm.models.save_for_hf``: any ViT), or a bare
    ``model.safetensors`` of the demo's tiny ViT configuration."""
    import timm

    weights = path / "model.safetensors"
    if (path / "config.json").exists():
        if not weights.is_file():  # timm would fall back to pickled weights, whose names cannot be checked
            raise BackboneError(f"--pretrained {str(path)!r} has config.json but no model.safetensors; write it with "
                                "timm.models.save_for_hf(model, dir, safe_serialization=True) (pickled weights are "
                                "not read)")
        name, kwargs = f"local-dir:{path}", {}
    elif (path / "model.safetensors").exists():
        name = "vit_tiny_patch16_224"
        kwargs = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2, num_classes=0, in_chans=4,
                      pretrained_cfg_overlay=dict(file=str(path / "model.safetensors")))
    else:
        raise BackboneError(f"--pretrained {str(path)!r}: for vit, give a timm directory with config.json "
                            "(timm.models.save_for_hf(model, dir, safe_serialization=True)), or a model.safetensors "
                            "of vit_tiny_patch16_224 at img_size=32, patch_size=8, depth=2, embed_dim=32, in_chans=4")
    try:
        model = timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, AssertionError) as exc:
        raise BackboneError(f"--pretrained {str(path)!r} could not be loaded as a timm ViT: {exc}; without "
                            "config.json the weights must be the demo's tiny ViT configuration") from exc
    if type(model).__name__ != "VisionTransformer":
        raise BackboneError(f"--pretrained {str(path)!r} holds a timm {type(model).__name__}, not a "
                            "VisionTransformer; the vit backbone needs a timm ViT")
    # timm loads a file without config.json non-strictly (num_classes=0 differs from the 1000 classes
    # of vit_tiny_patch16_224), so compare the names here: only the dropped classifier may be left out
    refuse_partial_load(model, [weights], f"--pretrained {str(path)!r}",
                        "give the weights of the model config.json describes (timm.models.save_for_hf), or without "
                        "config.json a state_dict of vit_tiny_patch16_224 at img_size=32, patch_size=8, depth=2, "
                        "embed_dim=32, num_heads=2, in_chans=4", expected_extra=vit_dropped_head(model))
    return model


def _vit_image_size(model: nn.Module) -> Tuple[int, int]:
    size = getattr(model.patch_embed, "img_size", None) or (32, 32)
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _vit_inputs(model: nn.Module, video: torch.Tensor, seed: int) -> Dict[str, Any]:
    # frames side by side as a 2x2 mosaic of the first channel, resized to the ViT's image size and
    # repeated over its input channels
    B, F, C, H, W = video.shape
    frames = video[:, :4, 0]
    if F < 4:
        frames = torch.cat([frames, frames[:, -1:].expand(B, 4 - F, H, W)], 1)
    mosaic = torch.cat([torch.cat([frames[:, 0], frames[:, 1]], -1), torch.cat([frames[:, 2], frames[:, 3]], -1)], -2)
    size = _vit_image_size(model)
    img = torch.nn.functional.interpolate(mosaic.unsqueeze(1), size=size, mode="nearest")
    chans = int(model.patch_embed.proj.in_channels)
    return dict(x=img.expand(B, chans, *size).contiguous())


def _vit_output(model: nn.Module, kwargs: Dict[str, Any]) -> torch.Tensor:
    return model.forward_features(kwargs["x"])  # (B, tokens, D): the head pools over tokens


def _vit_regions(tokens: Any) -> Dict[str, tuple]:
    if "cls" not in tokens.layout.regions:
        raise BackboneError("the demo reads the action at the ViT's class token, and this ViT has no prefix tokens "
                            "(class_token=False, reg_tokens=0); use a ViT with a class or register token")
    patches = tokens.layout.region_spec("patches").bounds
    cls = tokens.layout.region_spec("cls").bounds
    return {"video": patches, "action": (cls[0], cls[1], cls[2], cls[2] + 1, cls[4], cls[4] + 1)}


BACKBONES: Dict[str, DemoBackbone] = {
    "cogvideox": DemoBackbone("cogvideox", "canvas-plugin-cogvideox", _cog_build,
                              _load_diffusers("diffusers.CogVideoXTransformer3DModel"), _cog_inputs, _cog_readout,
                              _text_grid_regions, video_shape=_diffusers_video_shape),
    "mochi": DemoBackbone("mochi", "canvas-plugin-mochi", _mochi_build,
                          _load_diffusers("diffusers.MochiTransformer3DModel"), _mochi_inputs, _mochi_output,
                          _text_grid_regions, video_shape=_diffusers_video_shape),
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
