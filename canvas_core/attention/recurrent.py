"""Sequence-operator attention types: RWKV time-decay recurrence and Hyena long convolution.

This module gathers them under one path; they live in :mod:`canvas_core.attention.rwkv` and
:mod:`canvas_core.attention.hyena`, sharing :mod:`canvas_core.attention.causal_read`.

Both run causally along the key/value sequence (the connection's destination positions, in the
order given: region order on the canvas) and let queries read it at their causal read position
(:func:`canvas_core.attention._base.causal_read_index`): query ``i`` reads the state after key
``p(i) = ceil((i + 1) * Nk / Nq) - 1``.  ``Nq == Nk`` is the usual position-aligned causal
operator; ``Nq == 1`` reads the whole sequence; every query reads at least the first key.
"""

from __future__ import annotations

from canvas_core.attention.hyena import HyenaAttention, fft_causal_conv
from canvas_core.attention.rwkv import RWKVAttention, wkv_masked, wkv_scan

__all__ = ["RWKVAttention", "HyenaAttention", "wkv_scan", "wkv_masked", "fft_causal_conv"]
