"""Shared plumbing of the builtin attention types: config checks, head reshapes, key masks.

Every attention type maps ``queries (B, Nq, D), keys (B, Nk, D), values (B, Nk, D)`` and an
optional ``key_mask`` to ``(B, Nq, D)``.  ``key_mask`` is boolean (True = may attend), integer
(0 = blocked) or an additive float mask (``-inf`` = blocked, finite values are added to softmax
logits; NaN and ``+inf`` are refused), of any shape that broadcasts to ``(B, Nq, Nk)``; it is read
by :func:`canvas_core.attention.key_masks.normalize_key_mask` (re-exported here with
``linked_keys`` and ``check_additive_mask``, where the runtime imports them from).
"""
from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import torch
from torch import nn

from canvas_core.attention.key_masks import check_additive_mask, linked_keys, normalize_key_mask
from canvas_core.errors import CanvasTypeError, ShapeError
from canvas_core.plugins.loading import env_flag

__all__ = [
    "AttentionBase",
    "aligned_key_index",
    "causal_read_index",
    "check_dtypes_devices",
    "check_additive_mask",
    "linked_keys",
    "normalize_key_mask",
    "as_dtype",
    "has_key",
    "safe_div",
    "operators_under_compile",
]

#: ``CANVAS_COMPILE_TRACE_TYPES=1`` (read once, at import): see :func:`operators_under_compile`
_TRACE_TYPES = env_flag(os.environ, "CANVAS_COMPILE_TRACE_TYPES")


def autocast_on(device_type: str) -> bool:
    """Whether autocast is on for ``device_type``; False for a device type autocast does not know
    (``meta``: torch raises there instead of answering)."""
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except RuntimeError:
        return False


def operators_under_compile() -> bool:
    """Whether type modules that have one (``gated``, ``perceiver``, ``mamba``) run as their
    ``torch.library`` operators while ``torch.compile`` traces them: shorter compiles, compiled
    steps a few percent slower (docs/performance.md, "Compiling canvas models").  True unless the
    environment sets ``CANVAS_COMPILE_TRACE_TYPES=1`` before canvas-core's torch modules are
    imported; then the modules are traced op by op and inductor fuses their work."""
    return not _TRACE_TYPES


def _check_int(type_name: str, name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CanvasTypeError(
            f"{type_name}: {name} must be an int, got {type(value).__name__} {value!r}"
        )
    if value < minimum:
        raise CanvasTypeError(f"{type_name}: {name} must be >= {minimum}, got {value}")
    return value


def _check_width(type_name: str, name: str, value, minimum: int = 1) -> int:
    """:func:`_check_int`, then the ``width`` size limit (``CANVAS_MAX_WIDTH``): for a size that
    becomes a dimension of the type's weights, refused before anything is allocated."""
    from canvas_core.schema.limits import check_size

    _check_int(type_name, name, value, minimum)
    check_size("width", value, f"attention type {type_name!r} {name}")
    return value


def _check_finite(type_name: str, name: str, value, positive: bool = False) -> float:
    """A real number (not a bool), finite (NaN and inf would reach every output), and ``> 0``
    when ``positive``."""
    try:  # float() of an int past float's range raises OverflowError
        v = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:
        v = math.inf
    if not math.isfinite(v) or (positive and not v > 0):
        need = "a finite number > 0" if positive else "a finite number"
        raise CanvasTypeError(f"{type_name}: {name} must be {need}, got {value!r}")
    return v


class AttentionBase(nn.Module):
    """Base of the builtin attention types (config validation and tensor helpers).

    Args:
        d_model: model width ``D``; must be divisible by ``n_heads``.
        n_heads: number of heads.
        dropout: dropout probability on attention weights / outputs (training only).
    """

    #: registry name of the type (used in error messages)
    type_name: str = "attention"
    #: inverse temperature of softmax logits; softmax types set it to 1.0 (SharpeningSchedule
    #: changes it); ``None`` means 1.0.  Non-softmax types keep ``None`` and ignore it.
    beta: Optional[float] = None
    #: True when ``forward`` honours a per-query ``key_mask`` exactly (output row i depends only on
    #: the keys row i allows): the runtime then makes one masked call over the union of the keys.
    #: False (types that compress or scan, and positional types whose operator depends on where a
    #: key sits in the key list: copy, local_attention, random_fixed, rwkv, hyena): the runtime calls
    #: the type once per shape of key set, the key sets stacked along the batch, without a mask, so
    #: positions are those of the query's own key set (``canvas_core/runtime/type_call.py``).
    key_mask_exact: bool = False
    #: False when the output depends on no key or value at all (``none``): the runtime then skips
    #: the guard that sets rows linking a non-finite key to NaN (``runtime/type_call.py``).
    reads_keys: bool = True
    #: True when the module's own learnable gate makes its output exactly 0 at initialisation
    #: (``gated``); inside a backbone it then gets no second, block-level zero gate.
    self_gated: bool = False

    def __init__(self, d_model: int, n_heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        t = self.type_name
        _check_int(t, "d_model", d_model, 1)
        _check_int(t, "n_heads", n_heads, 1)
        from canvas_core.schema.limits import check_size

        check_size("width", d_model, f"attention type {t!r} d_model")  # before any weight is allocated
        if d_model % n_heads != 0:
            raise ShapeError(
                f"{t}: d_model={d_model} is not divisible by n_heads={n_heads}; "
                f"choose n_heads among the divisors of {d_model}"
            )
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, (int, float))
            or not 0.0 <= dropout <= 1.0  # as nn.Dropout and CanvasAttention: 1.0 drops everything
        ):
            raise CanvasTypeError(f"{t}: dropout must be a float in [0, 1], got {dropout!r}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout_p = float(dropout)

    # ------------------------------------------------------------------ checks / helpers
    def _beta(self) -> float:
        return 1.0 if self.beta is None else float(self.beta)

    def _check_inputs(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> None:
        t = self.type_name
        for name, x in (("queries", queries), ("keys", keys), ("values", values)):
            if not isinstance(x, torch.Tensor):
                raise CanvasTypeError(f"{t}: {name} must be a torch.Tensor, got {type(x).__name__}")
            if x.dim() != 3 or x.shape[-1] != self.d_model:
                raise ShapeError(
                    f"{t}: {name} must have shape (B, N, {self.d_model}), got {tuple(x.shape)}"
                )
        if keys.shape[:2] != values.shape[:2]:
            raise ShapeError(
                f"{t}: keys {tuple(keys.shape)} and values {tuple(values.shape)} must share (B, Nk)"
            )
        if keys.shape[0] != queries.shape[0]:
            raise ShapeError(
                f"{t}: queries {tuple(queries.shape)} and keys {tuple(keys.shape)} have different "
                "batch sizes"
            )
        check_dtypes_devices(t, self, queries=queries, keys=keys, values=values)

    def _prepare(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        key_mask: Optional[torch.Tensor],
    ) -> Tuple[int, int, int, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """The common forward preamble: check the inputs and normalise ``key_mask``.

        Args:
            queries: ``(B, Nq, D)``; keys, values: ``(B, Nk, D)``.
            key_mask: None, or any mask :meth:`_mask` accepts.

        Returns:
            ``(B, Nq, Nk, allowed, bias)``; ``allowed`` (bool) and ``bias`` (additive float) are
            ``(B|1, Nq|1, Nk)`` or None, as from :meth:`_mask`.
        """
        self._check_inputs(queries, keys, values)
        B, Nq, _ = queries.shape
        Nk = keys.shape[1]
        allowed, bias = self._mask(key_mask, B, Nq, Nk, queries)
        return B, Nq, Nk, allowed, bias

    def _mask(
        self, key_mask: Optional[torch.Tensor], B: int, Nq: int, Nk: int,
        like: Optional[torch.Tensor] = None,
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Normalise ``key_mask`` to ``(allowed, bias)``, each ``(B|1, Nq|1, Nk)`` or None: the
        published :func:`~canvas_core.attention.key_masks.normalize_key_mask` under this type's
        name.  ``like`` (the queries) fixes the device the mask must be on.
        """
        return normalize_key_mask(self.type_name, key_mask, B, Nq, Nk, like)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, D) -> (B, H, N, D/H)``."""
        B, N, _ = x.shape
        return x.view(B, N, self.n_heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, N, D/H) -> (B, N, D)``."""
        B, H, N, d = x.shape
        return x.transpose(1, 2).reshape(B, N, H * d)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, dropout={self.dropout_p}"


def check_dtypes_devices(type_name: str, module: Optional[nn.Module] = None, **tensors: torch.Tensor) -> None:
    """Raise :class:`ShapeError` unless the named tensors are floating point, share one dtype and
    one device, and (outside autocast) match the dtype / device of ``module``'s parameters."""
    items = [(n, x) for n, x in tensors.items() if x is not None]
    if not items:
        return
    for n, x in items:
        if not (x.is_floating_point() or x.is_complex()):
            raise ShapeError(
                f"{type_name}: {n} must be a floating-point tensor, got dtype {x.dtype}; convert it "
                f"with {n}.float()"
            )
    n0, x0 = items[0]
    for n, x in items[1:]:
        if x.dtype != x0.dtype or x.device != x0.device:
            raise ShapeError(
                f"{type_name}: {n} ({x.dtype}, {x.device}) and {n0} ({x0.dtype}, {x0.device}) must "
                f"share one dtype and device; convert with {n}.to({n0})"
            )
    if module is None:
        return
    p = next((q for q in module.parameters() if q.is_floating_point()), None)
    if p is None:
        return
    if p.device != x0.device:
        raise ShapeError(
            f"{type_name}: the inputs are on {x0.device} but the module's parameters are on "
            f"{p.device}; move one of them (module.to({str(x0.device)!r}))"
        )
    if p.dtype != x0.dtype and not autocast_on(x0.device.type):
        raise ShapeError(
            f"{type_name}: the inputs are {x0.dtype} but the module's parameters are {p.dtype}; "
            f"convert one of them (module.to({x0.dtype}) or the inputs .to({p.dtype})), or run under "
            "torch.autocast"
        )


def has_key(allowed: Optional[torch.Tensor], Nk: int, device) -> torch.Tensor:
    """``(B|1, Nq|1, 1)`` bool: does the query have at least one allowed key.

    ``allowed`` is ``(B|1, Nq|1, Nk)`` bool or None (every key allowed: ``(1, 1, 1)``, True
    unless ``Nk == 0``).
    """
    if allowed is None:
        return torch.full((1, 1, 1), Nk > 0, dtype=torch.bool, device=device)
    return allowed.any(dim=-1, keepdim=True)


def as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` cast to ``dtype``; ``t`` itself when it already has that dtype, so no conversion node
    appears in a traced graph for a cast that would do nothing."""
    return t if t.dtype == dtype else t.to(dtype)


def safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` with 0 where ``den == 0`` (gradient-safe: no NaN in the unused branch)."""
    ok = den > 0
    return num / torch.where(ok, den, torch.ones_like(den)) * ok


def aligned_key_index(Nq: int, Nk: int, device=None) -> torch.Tensor:
    """Nearest-index resampling ``(Nq,)``: query ``i`` -> key ``floor((i + 0.5) * Nk / Nq)``.

    The centre of query ``i`` on ``[0, 1)`` is ``(i + 0.5) / Nq``; the key whose cell
    ``[j / Nk, (j + 1) / Nk)`` contains it is chosen.  ``Nq == Nk`` gives the identity.
    Integer arithmetic (``(2i + 1) * Nk // (2 Nq)``) keeps it exact.
    """
    i = torch.arange(Nq, device=device)
    return ((2 * i + 1) * Nk) // (2 * max(Nq, 1))


def causal_read_index(Nq: int, Nk: int, device=None) -> torch.Tensor:
    """Causal read position ``(Nq,)`` for cross-length recurrences (RWKV, Hyena, Mamba).

    Query ``i`` covers ``[i / Nq, (i + 1) / Nq)`` of the key sequence's span; it reads the state
    after the last key whose cell starts before the query's cell ends:
    ``p(i) = ceil((i + 1) * Nk / Nq) - 1``.  With ``Nk >= 1`` every query reads at least key 0
    (a linked query never reads nothing); ``Nq == Nk`` gives ``p(i) = i`` (the usual causal
    output), ``Nq == 1`` reads the state after all keys, and ``Nk = s * Nq`` reads the end of
    each block of ``s`` keys.  ``Nk == 0`` gives ``-1`` (an empty state, zeros).  Integer
    arithmetic (``((i + 1) Nk + Nq - 1) // Nq - 1``) keeps it exact.
    """
    i = torch.arange(Nq, device=device)
    n = max(Nq, 1)
    return ((i + 1) * Nk + n - 1) // n - 1
