"""Backbone adapter for timm ``VisionTransformer`` models (``timm.create_model("vit_...")``).

* blocks: ``model.blocks`` (``nn.Sequential`` of ``Block``), called as ``block(x)`` -> ``x``.
* attention sequence: ``[prefix tokens (CLS, registers), patches (gh x gw)]``.
* canvas grid: ``T = 1``, spatial ``(gh + r, gw)`` with ``r = ceil(n_prefix / gw)`` extra rows;
  region ``"patches"`` = ``(0, 1, 0, gh, 0, gw)``, region ``"cls"`` = ``(0, 1, gh, gh + r, 0, gw)``
  holding the prefix tokens (row-major from ``(gh, 0)``).
* canvas attention: each standard ``timm.layers.Attention`` becomes a ``CanvasViTAttention``
  (same module, same parameters and state-dict keys; only its forward gains ``beta`` and the
  canvas bias, and calls timm's forward unchanged when neither is set).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, List, Mapping, Optional, Tuple

import torch
from torch import nn

from canvas_core.errors import BackboneError, CanvasTypeError, ShapeError
from canvas_core.extend import BackboneAdapter, CanvasAttentionHooks, TokenLayout

__all__ = ["ViTAdapter", "CanvasViTAttention"]

try:
    from timm.layers import Attention as _TimmAttention
except ImportError:  # pragma: no cover - the plugin requires timm
    _TimmAttention = nn.Module


class CanvasViTAttention(CanvasAttentionHooks, _TimmAttention):
    """timm ``Attention`` with an inverse temperature ``beta`` and an optional canvas topology
    (run by its plan on the block's own q/k/v); timm's forward unchanged when neither is set."""

    def forward(
        self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        if self.canvas_passthrough():
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if is_causal:
            causal = torch.ones(N, N, dtype=torch.bool, device=x.device).tril()
            attn_mask = (
                causal
                if attn_mask is None
                else attn_mask & causal
                if attn_mask.dtype == torch.bool
                else attn_mask.masked_fill(~causal, float("-inf"))
            )
        out = self.canvas_attend(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0
        )
        out = out.reshape(B, N, self.attn_dim)
        out = self.norm(out)
        if gate is not None:
            out = out * gate
        out = self.proj_drop(self.proj(out))
        extra = self.canvas_extra(x)
        return out if extra is None else out + extra


def _patch_grid(pe: nn.Module, shape: Tuple[Any, ...]) -> Tuple[Any, Any]:
    """``(gh, gw)`` of an image batch of ``shape`` (B, C, H, W) through the patch embedding."""
    if hasattr(pe, "dynamic_feat_size"):
        gh, gw = pe.dynamic_feat_size(tuple(shape[-2:]))
        return gh, gw
    ph, pw = pe.patch_size
    return shape[-2] // ph, shape[-1] // pw


def _check_image_size(pe: nn.Module, shape: Tuple[int, ...]) -> None:
    """Refuse (``BackboneError``) an image size the patch embedding would refuse at the forward,
    by timm's own rules: a fixed size unless ``dynamic_img_size``, whole patches unless
    ``dynamic_img_pad``."""
    img = getattr(pe, "img_size", None)
    try:
        from timm.layers import PatchEmbed
    except ImportError:  # pragma: no cover - timm is a dependency of this plugin
        return
    # only timm's PatchEmbed asserts these rules: a hybrid stem (HybridEmbed) patches its
    # backbone's feature map, takes sizes of its own, and keeps strict_img_size as a mere attribute
    if img is None or not isinstance(pe, PatchEmbed):
        return
    (ph, pw), (h, w) = tuple(pe.patch_size), shape[-2:]
    if getattr(pe, "strict_img_size", False):
        if (h, w) != tuple(img):
            raise BackboneError(
                f"ViT sample image is {h}x{w} but this model takes {img[0]}x{img[1]} images only "
                "(its patch embedding is strict); pass images of that size, or create the model "
                "with dynamic_img_size=True")
    elif not getattr(pe, "dynamic_img_pad", False) and (h % ph or w % pw):
        raise BackboneError(
            f"ViT sample image is {h}x{w}, not a whole number of {ph}x{pw} patches, which this "
            "model refuses; crop or pad the images to multiples of the patch size, or create the "
            "model with dynamic_img_pad=True")


def _fails_on_empty_batch(model: nn.Module) -> bool:
    """Whether timm's forward fails on an empty batch: ``_pos_embed`` then flattens the patch grid
    with ``x.view(B, -1, C)``, which cannot infer ``-1`` from 0 elements (``dynamic_img_size``,
    or no position embedding). Other ViTs run a batch of 0 images, and so does the grafted model."""
    return bool(getattr(model, "dynamic_img_size", False)) or getattr(model, "pos_embed", 0) is None


def _runnable(model: nn.Module, args: Tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict:
    """Refuse (``ShapeError``) an empty image batch (the forward's ``x``) where timm itself fails
    on it with a bare reshape error (:func:`_fails_on_empty_batch`)."""
    x = args[0] if args else kwargs.get("x")
    if (isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[0] == 0
            and _fails_on_empty_batch(model)):
        raise ShapeError(
            "ViT: the image batch is empty (0 images), which this model cannot run (timm flattens "
            "the patch grid of a model with dynamic_img_size=True or without a position embedding "
            "by a reshape that fails on 0 elements); skip the call when there is no image")
    return {}


def _call_shapes(pe: nn.Module, args: Tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict:
    """The patch grid of a ``patch_embed(x)`` call (Python ints from ``x``'s shape)."""
    x = args[0] if args else kwargs.get("x")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        return {}
    return {"grid": _patch_grid(pe, x.shape)}


def _no_patch_dropout(pd: nn.Module, args: Tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict:
    """Refuse a call of the ViT's patch dropout that would drop patches (train mode, ``prob > 0``):
    the tokens left are no longer where the installed token layout places them."""
    prob = float(getattr(pd, "prob", 0.0) or 0.0)
    if pd.training and prob > 0:
        raise BackboneError(
            f"this ViT's patch dropout (prob={prob}) drops random patches of every sample in train "
            "mode, so its tokens are no longer where the installed topology's token layout places "
            "them; set model.patch_drop.prob = 0 (or create the model with patch_drop_rate=0) while "
            "a topology is installed, or remove it (adapter.remove_topology(model))")
    return {}


class ViTAdapter(BackboneAdapter):
    name = "vit"
    model_classes = ("timm.VisionTransformer",)
    block_attr = "blocks"
    streams = ("x",)
    input_attrs = ("patch_embed",)

    def hidden_size(self, model: nn.Module) -> int:
        return int(model.embed_dim)

    def latent_channels(self, model: nn.Module) -> int:
        return int(getattr(model, "num_features", model.embed_dim))

    def attention_shape(self, model: nn.Module) -> Tuple[int, int]:
        for block in self.blocks(model):
            attn = getattr(getattr(block, "original", block), "attn", None)
            if attn is not None and hasattr(attn, "num_heads"):
                return int(attn.num_heads), int(attn.head_dim)
        raise BackboneError(f"{type(model).__name__} has no timm Attention in its blocks")

    def prepare(self, model: nn.Module) -> None:
        for block in self.blocks(model):
            attn = getattr(block, "attn", None)
            if attn is not None and type(attn) is _TimmAttention:
                attn.__class__ = CanvasViTAttention
                attn.beta = 1.0
                attn.canvas_topology = None
        super().prepare(model)

    def attention_targets(self, model: nn.Module) -> List[Any]:
        return [m for m in model.modules() if isinstance(m, CanvasViTAttention)]

    def input_guards(self, model: nn.Module, installed: bool) -> List[Tuple[Optional[nn.Module], Any]]:
        """The model's calls: no empty image batch where timm fails on one; with a topology also
        the patch embedding's: the patch grid the installed token layout was built for (with ``dynamic_img_size``
        another image size may give as many tokens on another grid), and a call of the patch
        dropout that would drop patches (train mode) raises ``BackboneError``."""
        guards: List[Tuple[Optional[nn.Module], Any]] = [(model, _runnable)]
        if not installed:
            return guards
        pd = getattr(model, "patch_drop", None)  # nn.Identity unless patch_drop_rate > 0
        dropout = [(pd, _no_patch_dropout)] if isinstance(pd, nn.Module) and hasattr(pd, "prob") else []
        return [*guards, (getattr(model, "patch_embed", None), _call_shapes), *dropout]

    def grid(self, model: nn.Module, sample_inputs: Optional[Mapping[str, Any]]) -> Tuple[int, int]:
        pe = model.patch_embed
        if isinstance(sample_inputs, Mapping) and sample_inputs and "x" not in sample_inputs:
            # another key would silently give the configured grid, not the image's
            raise BackboneError(
                f"ViT token_layout reads the image batch from sample_inputs['x'] (the argument of "
                f"timm's forward), got keys {sorted(map(str, sample_inputs))}; pass {{'x': images}} "
                "or the image tensor itself")
        x = (sample_inputs or {}).get("x") if isinstance(sample_inputs, Mapping) else sample_inputs
        if x is None:
            return tuple(int(g) for g in pe.grid_size)  # type: ignore[return-value]
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else tuple(x)
        if len(shape) != 4 or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in shape):
            raise BackboneError(
                f"ViT sample input must be an image batch (B, C, H, W) or its shape (4 ints), got "
                f"shape {shape}"
            )
        _check_image_size(pe, shape)
        return tuple(int(g) for g in _patch_grid(pe, shape))  # type: ignore[return-value]

    def token_layout(
        self, model: nn.Module, sample_inputs: Any = None, layout: Any = None
    ) -> TokenLayout:
        """``sample_inputs``: optional ``{"x": images (B, C, H, W)}`` (or the tensor); default:
        the model's configured image size."""
        from canvas_core.schema import CanvasLayout

        if sample_inputs is not None and not isinstance(
            sample_inputs, (Mapping, torch.Tensor, tuple, list)
        ):
            raise CanvasTypeError(
                f"ViT token_layout sample_inputs must be an image tensor or {{'x': ...}}, "
                f"got {type(sample_inputs).__name__}"
            )
        gh, gw = self.grid(model, sample_inputs)
        npfx = int(getattr(model, "num_prefix_tokens", 0))
        r = math.ceil(npfx / gw) if npfx else 0
        regions = {"patches": (0, 1, 0, gh, 0, gw)}
        if npfx:
            regions["cls"] = (0, 1, gh, gh + r, 0, gw)
        base = CanvasLayout(
            T=1, spatial_shape=(gh + r, gw), d_model=self.hidden_size(model), regions=regions
        )
        prefix = [(gh + j // gw) * gw + j % gw for j in range(npfx)]
        patches = list(range(gh * gw))
        tl = TokenLayout(base, tuple(prefix + patches), {"prefix_tokens": npfx, "grid": (gh, gw)})
        return tl.with_layout(layout) if layout is not None else tl
