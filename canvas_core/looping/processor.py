"""What a backbone's canvas attention is built on (diffusers processors and timm attention alike).

* :func:`canvas_sdpa`: ``softmax(beta * q k^T / sqrt(d) + mask) v`` (sharpening without topology).
* :class:`CanvasAttentionHooks`: the mixin every canvas attention of a backbone uses: pass through
  to the original code when nothing is set, else run the installed plan
  (:class:`~canvas_core.looping.installed.BlockTopology`) on the backbone's own ``q, k, v``.
* :class:`CanvasProcessorBase`: the same as a base class for attention processors.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F

from canvas_core.errors import BackboneError
from canvas_core.looping.installed import BlockTopology, beta_scaled

__all__ = ["canvas_sdpa", "CanvasAttentionHooks", "CanvasProcessorBase"]


def canvas_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    beta: float = 1.0,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """``softmax(beta * q k^T / sqrt(d) + attn_mask) v`` for ``q, k, v`` ``(B, H, S, d)``.

    ``attn_mask``: the backbone's own mask, additive or bool (True = may attend), or None."""
    q, scale = beta_scaled(q, beta)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~attn_mask, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)


class CanvasAttentionHooks:
    """Mixin of every canvas attention installed in a backbone (processor or module).

    ``beta`` (inverse temperature, 1.0) and ``canvas_topology`` (a :class:`BlockTopology`, None)
    are set by the wrapper / the adapter.  ``canvas_passthrough()`` says when the original code
    can run unchanged (bit-identical outputs)."""

    canvas_beta = True
    beta = 1.0
    canvas_topology: Optional[BlockTopology] = None
    canvas_bias = None  # kept for code that checks it: topologies no longer install a dense bias

    def canvas_passthrough(self) -> bool:
        return self.beta == 1.0 and self.canvas_topology is None

    def canvas_attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                      attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                      rows: Optional[torch.Tensor] = None, seq_len: Optional[int] = None,
                      shapes: Optional[Mapping[str, Any]] = None) -> torch.Tensor:
        """``(B, H, S, d)`` x3 -> ``(B, S, H, d)``: the plan when a topology is installed, else
        SDPA with ``beta`` (and the backbone's own ``attn_mask``).  ``seq_len``: the full
        sequence length to check against the installed layout (default ``S``); ``shapes``: what
        this call shows of the structure the layout was built for (e.g. ``{"text_len": L}``,
        Python ints; see :meth:`~canvas_core.looping.installed.InstalledTopology.check_shapes`)."""
        topo = self.canvas_topology
        if topo is None:
            out = canvas_sdpa(q, k, v, beta=self.beta, attn_mask=attn_mask, dropout_p=dropout_p)
            return out.transpose(1, 2)
        shared = topo.shared
        if shapes and hasattr(shared, "check_shapes"):  # (stand-ins for it may lack the method)
            shared.check_shapes(shapes)
        shared.check_len(q.shape[2] if seq_len is None else seq_len)
        if attn_mask is not None:
            raise BackboneError(
                "this backbone call passes its own attention mask, which a canvas topology cannot be "
                "combined with; express the mask as connections of the topology, or remove the "
                "topology (adapter.remove_topology(model))"
            )
        return topo.attend(q, k, v, beta=self.beta, dropout_p=dropout_p, rows=rows)

    def canvas_extra(self, x: torch.Tensor, rows: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        topo = self.canvas_topology
        return None if topo is None else topo.extra(x, rows)


class CanvasProcessorBase(CanvasAttentionHooks):
    """Base of the diffusers attention processors the adapters install (CogVideoX, Mochi): holds
    the processor it replaced and calls it whenever :meth:`canvas_passthrough` is true."""

    def __init__(self, original: Any) -> None:
        if not callable(original):
            raise BackboneError(
                f"{type(self).__name__}: original must be the attention processor it replaces "
                f"(a callable), got {type(original).__name__}"
            )
        self.original = original
        self.beta = 1.0
        self.canvas_topology = None

    @staticmethod
    def heads(t: torch.Tensor, n_heads: int) -> torch.Tensor:
        """``(B, S, H*d)`` -> ``(B, H, S, d)``."""
        B, S, _ = t.shape
        return t.view(B, S, n_heads, -1).transpose(1, 2)
