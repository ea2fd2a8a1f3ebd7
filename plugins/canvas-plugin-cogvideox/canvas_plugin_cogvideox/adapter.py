"""Backbone adapter for diffusers' ``CogVideoXTransformer3DModel``.

* blocks: ``model.transformer_blocks`` (``CogVideoXBlock``), called as
  ``block(hidden_states, encoder_hidden_states, temb, image_rotary_emb, attention_kwargs)`` and
  returning ``(hidden_states, encoder_hidden_states)``; both streams are looped.
* attention sequence: ``[text (L), video (F' x H' x W')]`` (``H' = H / p``, ``W' = W / p``,
  ``F' = F``, or ``F / p_t`` for CogVideoX 1.5, whose ``F`` must be a multiple of ``p_t``).
* canvas grid: ``T = F'``, spatial ``(H' + r, W')`` with ``r = ceil(L / W')`` extra rows; region
  ``"video"`` = ``(0, F', 0, H', 0, W')``, region ``"text"`` = ``(0, 1, H', H' + r, 0, W')``
  (text token j at frame 0, row ``H' + j // W'``, column ``j % W'``).
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Tuple

import torch
from torch import nn

from canvas_core.errors import BackboneError, CanvasTypeError, ShapeError
from canvas_core.extend import BackboneAdapter, CanvasProcessorBase, TokenLayout

__all__ = ["CogVideoXAdapter", "CanvasCogVideoXAttnProcessor"]


class CanvasCogVideoXAttnProcessor(CanvasProcessorBase):
    """CogVideoX joint text/video attention with an inverse temperature ``beta`` and an optional
    canvas topology (run by its plan on the backbone's own q/k/v, see ``docs/backbones.md``).
    With ``beta == 1`` and no topology it calls the processor it replaced, so outputs are
    bit-identical to the backbone's."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        image_rotary_emb: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    ):
        if self.canvas_passthrough():
            return self.original(
                attn,
                hidden_states,
                encoder_hidden_states,
                attention_mask=attention_mask,
                image_rotary_emb=image_rotary_emb,
            )
        text_len = encoder_hidden_states.size(1)
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        B, S, _ = x.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, S, B)
            attention_mask = attention_mask.view(B, attn.heads, -1, attention_mask.shape[-1])
        q, k, v = (self.heads(t, attn.heads) for t in (attn.to_q(x), attn.to_k(x), attn.to_v(x)))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if image_rotary_emb is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            q = torch.cat(
                [q[:, :, :text_len], apply_rotary_emb(q[:, :, text_len:], image_rotary_emb)], dim=2
            )
            if not attn.is_cross_attention:
                k = torch.cat(
                    [k[:, :, :text_len], apply_rotary_emb(k[:, :, text_len:], image_rotary_emb)],
                    dim=2,
                )
        out = self.canvas_attend(q, k, v, attn_mask=attention_mask,
                                 shapes={"text_len": text_len}).reshape(B, S, -1)
        out = attn.to_out[1](attn.to_out[0](out))
        extra = self.canvas_extra(x)
        if extra is not None:
            out = out + extra
        enc, hid = out.split([text_len, out.size(1) - text_len], dim=1)
        return hid, enc


def _check_patchable(what: str, shape: Tuple[int, ...], p: int, pt: Optional[int], whole_patches: bool) -> None:
    """Refuse (``ShapeError``) latents of ``shape`` ``(B, F, C, H, W)`` that the patch embedding
    cannot cut into whole patches: an empty batch, frames not a multiple of ``pt`` and (with
    ``pt``, where diffusers fails with a bare reshape error, or ``whole_patches``) a height or
    width not a multiple of ``p`` (without ``pt`` diffusers silently drops the last rows)."""
    B, F_, _, H, W = shape
    if B == 0:
        raise ShapeError(f"CogVideoX: {what} hold an empty batch (0 samples), which the backbone cannot "
                         "run; skip the call when there is nothing to denoise")
    _patched_frames(F_, pt, ShapeError)
    if (whole_patches or pt is not None) and (H % p or W % p):
        raise ShapeError(f"CogVideoX: latent height/width ({H}, {W}) of {what} must be multiples of "
                         f"patch_size {p} (the last rows or columns would be dropped, or fail to reshape); "
                         f"pad or crop the latents to ({H + -H % p}, {W + -W % p}) or ({H - H % p}, {W - W % p})")


def _runnable(model: nn.Module, args: Tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict:
    """Input check of a grafted CogVideoX (its forward's ``hidden_states``): latents the backbone
    can cut into patches, else ``ShapeError`` with the fix instead of diffusers' bare error."""
    x = args[0] if args else kwargs.get("hidden_states")
    if isinstance(x, torch.Tensor) and x.dim() == 5:
        c = model.config
        _check_patchable("the hidden_states", tuple(x.shape), c.patch_size, getattr(c, "patch_size_t", None), False)
    return {}


def _call_shapes(patch_embed: nn.Module, args: Tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict:
    """The shapes of a ``CogVideoXPatchEmbed(text_embeds, image_embeds)`` call, as
    :meth:`CogVideoXAdapter.token_layout` counts them (Python ints from shapes); whole patches
    only, since the installed token layout places every row and column."""
    text = args[0] if len(args) > 0 else kwargs.get("text_embeds")
    img = args[1] if len(args) > 1 else kwargs.get("image_embeds")
    if not isinstance(text, torch.Tensor) or not isinstance(img, torch.Tensor) or img.dim() != 5:
        return {}
    p, pt = patch_embed.patch_size, getattr(patch_embed, "patch_size_t", None)
    _check_patchable("the latents", tuple(img.shape), p, pt, True)
    _, F_, _, H, W = img.shape
    return {"text_len": text.shape[1], "frames": _patched_frames(F_, pt, ShapeError), "height": H // p,
            "width": W // p}


def _patched_frames(frames: int, pt: Optional[int], error: type) -> int:
    """``F'``: the latent frames in whole temporal patches; ``error`` when they do not fill them
    (diffusers' patch embedding would fail on them with a bare reshape error)."""
    if pt is not None and frames % pt:
        raise error(f"CogVideoX: latent frames ({frames}) must be a multiple of patch_size_t {pt}; "
                    f"pad the latents to {frames + pt - frames % pt} frames, as CogVideoX 1.5's "
                    "pipeline does")
    return frames if pt is None else frames // pt


_CONFIG_KEYS = ("num_attention_heads", "attention_head_dim")


def _config(model: Any) -> Any:
    """``model.config`` of a diffusers ``CogVideoXTransformer3DModel``; :class:`BackboneError`
    naming what was given and what is expected when ``model`` is something else (a block, its
    attention, another model) or its config lacks the head counts."""
    config = getattr(model, "config", None)
    values = {k: getattr(config, k, None) for k in _CONFIG_KEYS}
    if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values.values()):
        return config
    what = f"{type(model).__module__}.{type(model).__qualname__}"
    if config is None:
        found = "it has no .config"
        if hasattr(model, "attn1") or hasattr(model, "to_q"):
            found += " (it looks like a CogVideoX block or attention layer: pass the transformer holding it)"
    else:
        found = "its config has " + ", ".join(f"{k}={v!r}" for k, v in values.items())
    raise BackboneError(
        f"CogVideoX adapter: {what} is not a diffusers CogVideoXTransformer3DModel: {found}. "
        "Expected the transformer itself (e.g. pipe.transformer), whose config has positive integers "
        "num_attention_heads and attention_head_dim")


class CogVideoXAdapter(BackboneAdapter):
    name = "cogvideox"
    model_classes = ("diffusers.CogVideoXTransformer3DModel",)
    block_attr = "transformer_blocks"
    streams = ("hidden_states", "encoder_hidden_states")
    input_attrs = ("patch_embed",)
    native_types = ("cogvideox",)  # "the backbone's own attention"

    def hidden_size(self, model: nn.Module) -> int:
        c = _config(model)
        return int(c.num_attention_heads * c.attention_head_dim)

    def stream_dims(self, model: nn.Module) -> Tuple[int, ...]:
        d = self.hidden_size(model)
        return (d, d)

    def latent_channels(self, model: nn.Module) -> int:
        c = _config(model)
        return int(c.out_channels or c.in_channels)

    def step_input(self, model: nn.Module) -> Tuple[str, int, Optional[int]]:
        """``scope="model"``: the predicted latents (B, F, C, H, W) re-enter as ``hidden_states`` when
        the model predicts as many channels as it reads."""
        return self.latent_step_input(model, 2, "CogVideoX")

    def prepare(self, model: nn.Module) -> None:
        from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

        for block in self.blocks(model):  # (a grafted block: the one its wrapper loops)
            attn = getattr(getattr(block, "original", block), "attn1", None)
            if attn is None:
                continue
            proc = attn.processor
            if isinstance(proc, CanvasCogVideoXAttnProcessor):
                continue
            if type(proc) is CogVideoXAttnProcessor2_0:
                attn.set_processor(CanvasCogVideoXAttnProcessor(proc))
        super().prepare(model)

    def attention_targets(self, model: nn.Module) -> List[Any]:
        out = []
        for block in model.transformer_blocks:
            inner = getattr(block, "original", block)
            proc = getattr(getattr(inner, "attn1", None), "processor", None)
            if isinstance(proc, CanvasCogVideoXAttnProcessor):
                out.append(proc)
        return out

    def input_guards(self, model: nn.Module, installed: bool) -> List[Tuple[Optional[nn.Module], Any]]:
        """The model's calls: latents it can cut into patches (frames in whole temporal patches,
        no empty batch); with a topology also the patch embedding's: whole spatial patches, and
        the text length and patch grid of the installed token layout (the processor checks the
        text length too)."""
        guards: List[Tuple[Optional[nn.Module], Any]] = [(model, _runnable)]
        return guards + [(getattr(model, "patch_embed", None), _call_shapes)] if installed else guards

    def grid(self, model: nn.Module, frames: int, height: int, width: int) -> Tuple[int, int, int]:
        c = _config(model)
        p = c.patch_size
        if height % p or width % p:
            raise BackboneError(
                f"latent height/width ({height}, {width}) must be multiples of patch_size {p}"
            )
        return _patched_frames(frames, c.patch_size_t, BackboneError), height // p, width // p

    def token_layout(
        self,
        model: nn.Module,
        sample_inputs: Optional[Mapping[str, Any]] = None,
        layout: Any = None,
    ) -> TokenLayout:
        """``sample_inputs``: ``hidden_states`` ``(B, F, C, H, W)`` and ``encoder_hidden_states``
        ``(B, L, D_text)`` (tensors or shapes), as given to the model's forward."""
        if not isinstance(sample_inputs, Mapping):
            raise CanvasTypeError(
                "CogVideoX token_layout needs sample_inputs={'hidden_states': ..., "
                "'encoder_hidden_states': ...}"
            )
        _, F_, _, H, W = self.input_shape(sample_inputs, "hidden_states", 5, "(B, F, C, H, W) latent video")
        L = self.input_shape(sample_inputs, "encoder_hidden_states", 3, "(B, L, D) text embedding")[1]
        f, h, w = self.grid(model, F_, H, W)
        return self.video_text_tokens(model, f, h, w, L, text_first=True, layout=layout)
