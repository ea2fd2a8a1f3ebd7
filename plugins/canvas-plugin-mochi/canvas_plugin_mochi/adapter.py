"""Backbone adapter for diffusers' ``MochiTransformer3DModel``.

* blocks: ``model.transformer_blocks`` (``MochiTransformerBlock``), called as
  ``block(hidden_states, encoder_hidden_states, temb, encoder_attention_mask, image_rotary_emb)``
  and returning ``(hidden_states, encoder_hidden_states)``; both streams are looped (widths
  ``inner_dim`` and ``pooled_projection_dim``).
* attention sequence: ``[video (F x H' x W'), text (L)]``; padded text tokens (mask 0) are
  dropped per sample, exactly as Mochi does.
* canvas grid: ``T = F``, spatial ``(H' + r, W')``, ``r = ceil(L / W')``; regions ``"video"``
  ``(0, F, 0, H', 0, W')`` and ``"text"`` ``(0, 1, H', H' + r, 0, W')``.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from canvas_core.errors import BackboneError, CanvasTypeError, ShapeError
from canvas_core.extend import BackboneAdapter, CanvasProcessorBase, TokenLayout

__all__ = ["MochiAdapter", "CanvasMochiAttnProcessor"]


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    even, odd = x[..., 0::2].float(), x[..., 1::2].float()
    return torch.stack(
        [(even * cos - odd * sin).to(x.dtype), (even * sin + odd * cos).to(x.dtype)], dim=-1
    ).flatten(-2)


class CanvasMochiAttnProcessor(CanvasProcessorBase):
    """Mochi joint attention with an inverse temperature ``beta`` and an optional canvas topology
    (run by its plan on the backbone's own q/k/v; padded prompt tokens are dropped per sample as
    Mochi does, and the plan restricted to the kept tokens); calls the replaced processor
    unchanged when ``beta == 1`` and no topology is installed."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        image_rotary_emb: Optional[torch.Tensor] = None,
    ):
        if self.canvas_passthrough():
            return self.original(
                attn,
                hidden_states,
                encoder_hidden_states,
                attention_mask,
                image_rotary_emb=image_rotary_emb,
            )
        q = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))
        k = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        v = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        eq = attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
        ek = attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
        ev = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
        if attn.norm_added_q is not None:
            eq = attn.norm_added_q(eq)
        if attn.norm_added_k is not None:
            ek = attn.norm_added_k(ek)
        if image_rotary_emb is not None:
            q, k = _rope(q, *image_rotary_emb), _rope(k, *image_rotary_emb)
        q, k, v, eq, ek, ev = (t.transpose(1, 2) for t in (q, k, v, eq, ek, ev))
        nv, nt = q.size(2), eq.size(2)
        topo = self.canvas_topology is not None
        B, H, _, d = q.shape
        # samples with the same kept prompt tokens run together (Mochi drops padded ones per sample)
        groups: dict = {}
        for b in range(B):
            valid = torch.nonzero(attention_mask[b].flatten(), as_tuple=False).flatten().to(q.device)
            groups.setdefault(tuple(valid.tolist()), (valid, []))[1].append(b)
        out = q.new_zeros(B, nv + nt, H, d)
        extra = None
        for valid, members in groups.values():
            idx = torch.tensor(members, device=q.device)
            rows = torch.cat([torch.arange(nv, device=q.device), nv + valid]) if topo else None
            qq = torch.cat([q[idx], eq[idx][:, :, valid]], dim=2)
            kk = torch.cat([k[idx], ek[idx][:, :, valid]], dim=2)
            vv = torch.cat([v[idx], ev[idx][:, :, valid]], dim=2)
            o = self.canvas_attend(qq, kk, vv, rows=rows, seq_len=nv + nt,
                                   shapes={"text_len": nt})  # (b, S', H, d)
            out[idx] = F.pad(o, (0, 0, 0, 0, 0, nv + nt - o.size(1)))
            if topo:
                # the modules of non-softmax types read video tokens only (checked at install)
                e = self.canvas_extra(F.pad(hidden_states[idx], (0, 0, 0, len(valid))), rows=rows)
                if e is not None:
                    extra = hidden_states.new_zeros(B, nv, e.shape[-1]) if extra is None else extra
                    extra[idx] = e[:, :nv]
        out = out.flatten(2, 3)
        hid, enc = out.split_with_sizes((nv, nt), dim=1)
        hid = attn.to_out[1](attn.to_out[0](hid))
        if extra is not None:
            hid = hid + extra
        if hasattr(attn, "to_add_out"):
            enc = attn.to_add_out(enc)
        return hid, enc


def _call_shapes(rope: nn.Module, args: Tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict:
    """The latent patch grid of a Mochi call, from its ``rope(pos_frequencies, num_frames,
    post_patch_height, post_patch_width, ...)`` call (Python ints)."""
    names = ("pos_frequencies", "num_frames", "height", "width")
    vals = {n: args[i] if i < len(args) else kwargs.get(n) for i, n in enumerate(names)}
    if any(vals[n] is None for n in names[1:]):
        return {}
    return {"frames": vals["num_frames"], "height": vals["height"], "width": vals["width"]}


def _runnable(model: nn.Module, args: Tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict:
    """Refuse (``ShapeError``) latents ``(B, C, F, H, W)`` (the forward's ``hidden_states``) that
    Mochi cannot run, before any block does: an empty batch, no frame, or a height / width that
    is not a multiple of the patch fail only at the output's reshape, with a bare error."""
    x = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        return {}
    p, (B, _, F_, H, W) = model.config.patch_size, x.shape
    if B == 0 or F_ == 0:
        raise ShapeError(f"Mochi: the hidden_states {tuple(x.shape)} hold no sample or no frame, which the "
                         "backbone cannot run; skip the call when there is nothing to denoise")
    if H % p or W % p:
        raise ShapeError(f"Mochi: latent height/width ({H}, {W}) must be multiples of patch_size {p} "
                         f"(the backbone fails to reshape its output otherwise); pad or crop the latents "
                         f"to ({H + -H % p}, {W + -W % p}) or ({H - H % p}, {W - W % p})")
    return {}


def _check_config(c: Any, video: Tuple[int, ...], text: Tuple[int, ...]) -> None:
    """Refuse (``BackboneError``) sample shapes that this model's config cannot run, naming both:
    latents ``(B, C, F, H, W)`` with ``C != in_channels``, no frame, or a height / width that is
    not a positive multiple of ``patch_size``; a text embedding ``(B, L, D)`` with
    ``D != text_embed_dim``."""
    _, C, F_, H, W = video
    p, want = int(c.patch_size), f"(B, {int(c.in_channels)}, F, H, W)"
    fix = (f"give sample_inputs of the shapes its forward takes (latents {want} with F >= 1 and H, W "
           f"positive multiples of {p}; text (B, L, {int(c.text_embed_dim)}))")
    if C != c.in_channels or F_ < 1 or H < p or W < p or H % p or W % p:
        raise BackboneError(
            f"Mochi token_layout: sample_inputs['hidden_states'] has shape {tuple(video)}, but this model "
            f"(in_channels={c.in_channels}, patch_size={p}) takes latents {want} of at least one frame and a "
            f"whole, non-empty grid of {p}x{p} patches; {fix}")
    if text[2] != c.text_embed_dim:
        raise BackboneError(
            f"Mochi token_layout: sample_inputs['encoder_hidden_states'] has shape {tuple(text)}, but this "
            f"model (text_embed_dim={c.text_embed_dim}) takes text embeddings (B, L, {c.text_embed_dim}); {fix}")


#: the report's note on a topology in which no video token reads a text token
CAPTION_NOTE = ("Mochi pools the caption into the time embedding (time_embed.pooler), which modulates every "
                "video token in every block: the video still depends on the text although no connection "
                "lets video read text")


def _video_reads_text(installed: Any) -> bool:
    """Whether a rectangle of the installed token plan has a video query and a text key (tokens
    ``[video (S - L), text (L)]``)."""
    tp, L = installed.token_plan, int(installed.tokens.info.get("text_len", 0))
    video = np.asarray(tp.perm) < installed.seq_len - L  # per packed position
    cv = np.concatenate([[0], np.cumsum(video)])
    ct = np.concatenate([[0], np.cumsum(~video)])
    return any(bool((((cv[g.q1] - cv[g.q0]) > 0) & ((ct[g.k1] - ct[g.k0]) > 0)).any())
               for g in tp.groups.values())


class MochiAdapter(BackboneAdapter):
    name = "mochi"
    model_classes = ("diffusers.MochiTransformer3DModel",)
    block_attr = "transformer_blocks"
    streams = ("hidden_states", "encoder_hidden_states")
    input_attrs = ("patch_embed",)
    output_channel_dim = 1  # sample is (B, C, F, H, W): the ActionHead reads channels first

    def hidden_size(self, model: nn.Module) -> int:
        c = model.config
        return int(c.num_attention_heads * c.attention_head_dim)

    def stream_dims(self, model: nn.Module) -> Tuple[int, ...]:
        return (self.hidden_size(model), int(model.config.pooled_projection_dim))

    def latent_channels(self, model: nn.Module) -> int:
        c = model.config
        return int(c.out_channels or c.in_channels)

    def step_input(self, model: nn.Module) -> Tuple[str, int, Optional[int]]:
        """``scope="model"``: the predicted latents (B, C, F, H, W) re-enter as ``hidden_states`` when
        the model predicts as many channels as it reads."""
        return self.latent_step_input(model, 1, "Mochi")

    def module_tokens(self, model: nn.Module, tokens: TokenLayout):
        """Modules of non-softmax types read and write video tokens only: Mochi's text tokens
        live in the context stream (its own width and output projection)."""
        L = int(tokens.info.get("text_len", 0))
        allowed = np.ones(tokens.seq_len, dtype=bool)
        if L:
            allowed[tokens.seq_len - L :] = False
        why = (f"Mochi's text tokens live in the context stream (width "
               f"{int(model.config.pooled_projection_dim)}, projected by its own to_add_out), which a "
               "module of this type cannot read or write alongside the video tokens")
        return allowed, self.hidden_size(model), why

    def input_guards(self, model: nn.Module, installed: bool) -> List[Tuple[Optional[nn.Module], Any]]:
        """The model's calls: latents Mochi can run; with a topology also its RoPE call: the
        patch grid of the installed token layout (the processor checks the text length)."""
        guards: List[Tuple[Optional[nn.Module], Any]] = [(model, _runnable)]
        return guards + [(getattr(model, "rope", None), _call_shapes)] if installed else guards

    def prepare(self, model: nn.Module) -> None:
        from diffusers.models.attention_processor import MochiAttnProcessor2_0

        for block in self.blocks(model):  # (a grafted block: the one its wrapper loops)
            attn = getattr(getattr(block, "original", block), "attn1", None)
            if attn is not None and type(attn.processor) is MochiAttnProcessor2_0:
                attn.processor = CanvasMochiAttnProcessor(attn.processor)
        super().prepare(model)

    def install_topology(self, model: nn.Module, topology: Any, tokens: Any, **options: Any) -> Any:
        """:meth:`BackboneAdapter.install_topology`; the report notes (:data:`CAPTION_NOTE`) when no
        video token reads a text token: the caption still reaches the video through ``temb``."""
        installed = super().install_topology(model, topology, tokens, **options)
        if installed is not None and not _video_reads_text(installed):
            installed.notes = (*installed.notes, CAPTION_NOTE)
        return installed

    def attention_targets(self, model: nn.Module) -> List[Any]:
        out = []
        for block in model.transformer_blocks:
            inner = getattr(block, "original", block)
            proc = getattr(getattr(inner, "attn1", None), "processor", None)
            if isinstance(proc, CanvasMochiAttnProcessor):
                out.append(proc)
        return out

    def token_layout(
        self,
        model: nn.Module,
        sample_inputs: Optional[Mapping[str, Any]] = None,
        layout: Any = None,
    ) -> TokenLayout:
        """``sample_inputs``: ``hidden_states`` ``(B, C, F, H, W)`` and ``encoder_hidden_states``
        ``(B, L, D_text)`` (tensors or shapes), as given to the model's forward."""
        if not isinstance(sample_inputs, Mapping):
            raise CanvasTypeError(
                "Mochi token_layout needs sample_inputs={'hidden_states': ..., "
                "'encoder_hidden_states': ...}"
            )
        video = self.input_shape(sample_inputs, "hidden_states", 5, "(B, C, F, H, W) latent video")
        text = self.input_shape(sample_inputs, "encoder_hidden_states", 3, "(B, L, D) text embedding")
        _check_config(model.config, video, text)
        p = model.config.patch_size
        return self.video_text_tokens(model, video[2], video[3] // p, video[4] // p, text[1], text_first=False,
                                      layout=layout)
