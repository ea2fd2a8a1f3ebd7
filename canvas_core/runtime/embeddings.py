"""Embeddings that make up a canvas position's identity: the N-d sinusoidal positional encoding,
the update-period embedding and the program's family + carrier embedding.

:class:`~canvas_core.runtime.canvas.SpatiotemporalCanvas` sums them with each position's
content; they live here so the canvas module keeps to the tensor and its regions.
"""

from __future__ import annotations

import math
import operator
from typing import Optional, Tuple

import torch
from torch import nn

from canvas_core.errors import CanvasTypeError, ShapeError
from canvas_core.schema.limits import check_elements, check_size

__all__ = [
    "SinusoidalPositionalEncodingND",
    "SinusoidalPositionalEncoding3D",
    "PeriodEmbedding",
    "FamilyCarrierEmbedding",
    "sinusoid_table",
]


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """``(length, dim)`` 1-d sinusoidal encoding: columns ``2i`` = ``sin(pos / 10000^(2i/dim))``,
    ``2i + 1`` = ``cos(...)`` (an odd ``dim`` ends with a sine column)."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    i = torch.arange(0, dim, 2, dtype=torch.float64)
    freq = torch.exp(-math.log(10000.0) * i / max(dim, 1))
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table.float()


class SinusoidalPositionalEncodingND(nn.Module):
    """N-d sinusoidal positional encoding of a ``(T, S0, S1, ...)`` grid.

    ``d_model`` is split evenly across the ``1 + len(max_spatial)`` axes (the remainder goes to
    the last axis); each axis' slice is the 1-d encoding of that coordinate
    (:func:`sinusoid_table`).  Only the per-axis tables are stored.
    """

    def __init__(
        self, d_model: int, max_T: int = 32, max_spatial: Tuple[int, ...] = (64, 64)
    ) -> None:
        super().__init__()
        sizes = (max_T, *tuple(max_spatial))
        for v in (d_model, *sizes):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise CanvasTypeError(
                    f"SinusoidalPositionalEncodingND: sizes must be ints >= 1, got "
                    f"d_model={d_model!r}, max_T={max_T!r}, max_spatial={max_spatial!r}"
                )
        check_size("width", d_model, "SinusoidalPositionalEncodingND d_model")
        for axis, size in enumerate(sizes):
            check_size("positions", size, f"SinusoidalPositionalEncodingND size of axis {axis}")
        check_elements((sum(sizes), d_model), "SinusoidalPositionalEncodingND tables")
        n = len(sizes)
        base = d_model // n
        self.dims = tuple([base] * (n - 1) + [d_model - base * (n - 1)])
        self.d_model, self.max_sizes = d_model, sizes
        for k, (size, dim) in enumerate(zip(sizes, self.dims)):
            self.register_buffer(f"table_{k}", sinusoid_table(size, dim), persistent=False)

    def forward(self, T: int, spatial_shape: Tuple[int, ...]) -> torch.Tensor:
        """The encoding ``(T, *spatial_shape, d_model)``."""
        try:
            if isinstance(T, bool) or any(isinstance(s, bool) for s in spatial_shape):
                raise TypeError("bool is not a size")
            shape = (operator.index(T), *(operator.index(s) for s in spatial_shape))
        except TypeError:
            shape = None
        if shape is None:
            raise ShapeError(
                f"SinusoidalPositionalEncodingND: T and spatial_shape must be ints, got T={T!r}, "
                f"spatial_shape={spatial_shape!r}"
            )
        if len(shape) != len(self.max_sizes) or any(
            s > m or s < 0 for s, m in zip(shape, self.max_sizes)
        ):
            raise ShapeError(
                f"SinusoidalPositionalEncodingND: grid {shape} does not fit the "
                f"maximum {self.max_sizes}; build the encoding with larger maxima"
            )
        parts = []
        n = len(shape)
        for k, size in enumerate(shape):
            t = getattr(self, f"table_{k}")[:size]  # (size, dim_k)
            view = [1] * n + [t.shape[1]]
            view[k] = size
            parts.append(t.view(view).expand(*shape, t.shape[1]))
        return torch.cat(parts, dim=-1)


class SinusoidalPositionalEncoding3D(SinusoidalPositionalEncodingND):
    """``(T, H, W)`` positional encoding (the 2-d-spatial case of the N-d encoding)."""

    def __init__(self, d_model: int, max_T: int = 32, max_H: int = 64, max_W: int = 64) -> None:
        super().__init__(d_model, max_T, (max_H, max_W))

    def forward(
        self, T: int, H: int = 0, W: int = 0, spatial_shape: Optional[Tuple[int, ...]] = None
    ) -> torch.Tensor:
        """``(T, H, W, d_model)``; ``spatial_shape=(H, W)`` may replace ``H, W``."""
        return super().forward(T, tuple(spatial_shape) if spatial_shape is not None else (H, W))


class PeriodEmbedding(nn.Module):
    """Learned embedding of a region's update period, indexed by a log bucket.

    ``bucket(1) = 0`` and ``bucket(p) = min(floor(log(p) / log(max_period) * (n_buckets - 1)) + 1,
    n_buckets - 1)`` for ``p > 1`` (canvas-engineering's table, so that a checkpoint's rows mean
    the same periods in both packages): period 1 -> 0, 2 -> 2, 4 -> 3, 16 -> 5, 576 -> 11,
    4608 -> 14 with the defaults.
    """

    def __init__(self, d_model: int, n_buckets: int = 16, max_period: int = 10000) -> None:
        super().__init__()
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1:
            raise CanvasTypeError(f"PeriodEmbedding: d_model must be an int >= 1, got {d_model!r}")
        check_size("width", d_model, "PeriodEmbedding d_model")
        if (
            not isinstance(n_buckets, int)
            or n_buckets < 1
            or not isinstance(max_period, int)
            or max_period < 2
        ):
            raise CanvasTypeError(
                f"PeriodEmbedding: need n_buckets >= 1 and max_period >= 2, got "
                f"{n_buckets!r}, {max_period!r}"
            )
        self.n_buckets, self.max_period = n_buckets, max_period
        self.embedding = nn.Embedding(n_buckets, d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def bucket(self, period: int) -> int:
        """Bucket index of ``period`` (>= 1; 0 is read as 1, with a warning, as canvas-engineering
        reads it)."""
        if isinstance(period, bool) or not isinstance(period, int) or period < 0:
            raise CanvasTypeError(f"PeriodEmbedding: period must be an int >= 1, got {period!r}")
        if period == 0:
            import warnings

            warnings.warn("PeriodEmbedding: period 0 is read as period 1 (bucket 0); region periods are >= 1",
                          UserWarning, stacklevel=2)
            return 0
        if period == 1:
            return 0
        b = math.floor(math.log(period) / math.log(self.max_period) * (self.n_buckets - 1) + 1e-9) + 1
        return max(0, min(self.n_buckets - 1, b))

    def forward(self, period: int) -> torch.Tensor:
        """``(d_model,)`` embedding of ``period``."""
        return self.embedding.weight[self.bucket(period)]


class FamilyCarrierEmbedding(nn.Module):
    """Sum of a learned family embedding and a learned carrier embedding, ``(d_model,)``.

    Families ``observation, state, memory, residual, action`` and carriers ``deterministic,
    diffusive, filter, memory, residual`` have their own rows; any other string (custom
    families) maps to a dedicated last "unknown" row of each table.
    """

    FAMILIES: Tuple[str, ...] = ("observation", "state", "memory", "residual", "action")
    CARRIERS: Tuple[str, ...] = ("deterministic", "diffusive", "filter", "memory", "residual")

    def __init__(self, d_model: int) -> None:
        super().__init__()
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1:
            raise CanvasTypeError(f"FamilyCarrierEmbedding: d_model must be an int >= 1, got {d_model!r}")
        check_size("width", d_model, "FamilyCarrierEmbedding d_model")
        self.d_model = d_model
        # canvas-engineering's attribute names: its state dicts load as they are
        self.family_embedding = nn.Embedding(len(self.FAMILIES) + 1, d_model)
        self.carrier_embedding = nn.Embedding(len(self.CARRIERS) + 1, d_model)
        nn.init.normal_(self.family_embedding.weight, std=0.02)
        nn.init.normal_(self.carrier_embedding.weight, std=0.02)

    # names used by earlier canvas-core releases (attributes and state-dict keys)
    _OLD_NAMES = {"family_emb.": "family_embedding.", "carrier_emb.": "carrier_embedding."}

    @property
    def family_emb(self) -> nn.Embedding:
        return self.family_embedding

    @property
    def carrier_emb(self) -> nn.Embedding:
        return self.carrier_embedding

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        for old, new in self._OLD_NAMES.items():
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def family_idx(self, family: str) -> int:
        return self.FAMILIES.index(family) if family in self.FAMILIES else len(self.FAMILIES)

    def carrier_idx(self, carrier: str) -> int:
        return self.CARRIERS.index(carrier) if carrier in self.CARRIERS else len(self.CARRIERS)

    def forward(self, family: str, carrier: str) -> torch.Tensor:
        """``(d_model,)`` embedding of a family + carrier pair."""
        return (
            self.family_embedding.weight[self.family_idx(family)]
            + self.carrier_embedding.weight[self.carrier_idx(carrier)]
        )

    def __repr__(self) -> str:  # one line, canvas-engineering's text
        return (
            f"FamilyCarrierEmbedding(d_model={self.d_model}, families={len(self.FAMILIES)}, "
            f"carriers={len(self.CARRIERS)})"
        )
