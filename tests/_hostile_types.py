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
