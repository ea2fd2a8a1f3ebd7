"""Plugin attention types for the tests of the build probe and the conformance kit: a correct
per-key-set softmax and variants that break the per-key-set rule only in some calls."""

from __future__ import annotations

import torch
from torch import nn


class PlainSoftmax(nn.Module):
    """Softmax attention over the keys given, then a projection (a correct per-key-set type)."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def attend(self, q, k, v):
        if k.shape[1] == 0:
            return torch.zeros_like(q)
        return self.proj(torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, -1) @ v)

    def forward(self, q, k, v):
        return self.attend(q, k, v)


class ManyRowsLeak(PlainSoftmax):
    """Mixes every row of a call in, but only when the call stacks more than 8 rows."""

    def forward(self, q, k, v):
        o = self.attend(q, k, v)
        return o + v.mean(dim=(0, 1), keepdim=True) if q.shape[0] > 8 else o


class ManyQueriesLeak(PlainSoftmax):
    """Mixes the queries of a key set, but only above 8 queries."""

    def forward(self, q, k, v):
        o = self.attend(q, k, v)
        return o + q.mean(1, keepdim=True) if q.shape[1] > 8 else o


class KeepsState(PlainSoftmax):
    """Adds the mean of the values its previous call saw."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__(d_model, n_heads, dropout)
        self.memory = None

    def forward(self, q, k, v):
        o = self.attend(q, k, v)
        if self.memory is not None:
            o = o + self.memory
        self.memory = v.detach().mean(dim=(0, 1), keepdim=True)
        return o


class CallCounter(PlainSoftmax):
    """Adds a count of its calls: two identical calls differ (no key read, but no function either)."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__(d_model, n_heads, dropout)
        self.calls = 0

    def forward(self, q, k, v):
        self.calls += 1
        return self.attend(q, k, v) + 1e-2 * self.calls


class CountsInTraining(CallCounter):
    """Adds a count of its calls in training mode only (a schedule kept in forward)."""

    def forward(self, q, k, v):
        if not self.training:
            return self.attend(q, k, v)
        return super().forward(q, k, v)


class UrandomNoise(PlainSoftmax):
    """Adds a little noise drawn from ``os.urandom`` in every call: identical calls differ, but no
    earlier call decides how (randomness outside torch's generators, not state)."""

    def forward(self, q, k, v):
        import os

        g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
        return self.attend(q, k, v) + 1e-3 * torch.randn(q.shape, generator=g).to(q.dtype)


class DropoutSoftmax(PlainSoftmax):
    """A correct per-key-set type with dropout on its output (random in training mode only)."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__(d_model, n_heads, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, q, k, v):
        return self.drop(self.attend(q, k, v))


class KeepsStateTraining(DropoutSoftmax):
    """Adds the mean of the values its previous call saw, in training mode only (eval mode is clean)."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__(d_model, n_heads, dropout)
        self.memory = None

    def forward(self, q, k, v):
        o = self.drop(self.attend(q, k, v))
        if not self.training:
            return o
        if self.memory is not None:
            o = o + self.memory
        self.memory = v.detach().mean(dim=(0, 1), keepdim=True)
        return o


class ExactSoftmax(PlainSoftmax):
    """A correct ``key_mask_exact`` softmax: masked keys get no weight, a query with none outputs 0."""

    key_mask_exact = True

    def forward(self, q, k, v, key_mask=None):
        if k.shape[1] == 0:
            return torch.zeros_like(q)
        m = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool, device=q.device) if key_mask is None else key_mask
        m = m if m.dim() == 3 else m.unsqueeze(0)  # (Nq, Nk) from the runtime
        w = torch.softmax((q @ k.transpose(1, 2) / q.shape[-1] ** 0.5).masked_fill(~m, float("-inf")), -1)
        return self.proj(w.nan_to_num(0.0) @ v) * m.any(-1, keepdim=True)


class ExactLeaksAtBatch1(ExactSoftmax):
    """Adds the mean of every value (linked or not, no gradient) to each query, at batch 1 only
    (and only with at least ``min_keys`` keys)."""

    min_keys = 1

    def forward(self, q, k, v, key_mask=None):
        o = super().forward(q, k, v, key_mask)
        return o + v.detach().mean(1, keepdim=True) if q.shape[0] == 1 and k.shape[1] >= self.min_keys else o


class ExactLeaksAtBatch1Large(ExactLeaksAtBatch1):
    """The same, only with more keys than the build probe's small call has (6)."""

    min_keys = 9


class ExactMixesManySamples(ExactSoftmax):
    """Mixes every sample's values in, but only when the call holds more than 8 samples."""

    def forward(self, q, k, v, key_mask=None):
        o = super().forward(q, k, v, key_mask)
        return o + v.mean(dim=(0, 1), keepdim=True) if q.shape[0] > 8 else o


class OwnRandomDropout(PlainSoftmax):
    """Drops its output rows with Python's ``random`` in training mode: random outside torch's
    generators (not reproducible by seeding torch), which training mode tolerates."""

    def forward(self, q, k, v):
        import random

        o = self.attend(q, k, v)
        if not self.training:
            return o
        keep = torch.tensor([[random.random() > 0.3 for _ in range(q.shape[1])] for _ in range(q.shape[0])])
        return o * keep.unsqueeze(-1).to(o.dtype)


class SelfGatedLiar(PlainSoftmax):
    """Declares ``self_gated = True`` (0 at initialisation) but outputs its softmax read as built."""

    self_gated = True


class SelfGatedHonest(PlainSoftmax):
    """Declares ``self_gated = True`` and means it: ``tanh(alpha)`` in front, ``alpha`` starting at 0."""

    self_gated = True

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__(d_model, n_heads, dropout)
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, q, k, v):
        return torch.tanh(self.alpha) * self.attend(q, k, v)


class KeyBlindHonest(ExactSoftmax):
    """Declares ``reads_keys = False`` and means it: a projection of the query, 0 for a row with no key."""

    reads_keys = False

    def forward(self, q, k, v, key_mask=None):
        m = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool, device=q.device) if key_mask is None else key_mask
        return self.proj(q) * (m if m.dim() == 3 else m.unsqueeze(0)).any(-1, keepdim=True).to(q.dtype)


class KeyBlindLiar(ExactSoftmax):
    """Declares ``reads_keys = False`` but is an exact softmax: reads its keys (with a gradient)."""

    reads_keys = False


class KeyBlindDetached(KeyBlindHonest):
    """Declares ``reads_keys = False`` but adds its linked values' mean behind ``.detach()`` (no gradient)."""

    def forward(self, q, k, v, key_mask=None):
        m = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool, device=q.device) if key_mask is None else key_mask
        w = (m if m.dim() == 3 else m.unsqueeze(0)).to(q.dtype)
        return super().forward(q, k, v, key_mask) + (w @ v.detach()) / w.sum(-1, keepdim=True).clamp(min=1)


class KeyBlindNaN(KeyBlindHonest):
    """Declares ``reads_keys = False``; its output moves with no key, but a NaN key makes all of it NaN."""

    def forward(self, q, k, v, key_mask=None):
        return super().forward(q, k, v, key_mask) + 0 * k.sum()


class MixesKeySets(PlainSoftmax):
    """Per key set, but adds the mean of every value of the call (every stacked key set, every sample)."""

    def forward(self, q, k, v):
        return self.attend(q, k, v) + v.mean(dim=(0, 1), keepdim=True)


class ExactReadsAll(ExactSoftmax):
    """Declares ``key_mask_exact`` but adds the mean of every value, linked or not."""

    def forward(self, q, k, v, key_mask=None):
        return super().forward(q, k, v, key_mask) + v.mean(1, keepdim=True)
