"""Issue 23 audit: the conformance kit fails a type that mixes the rows of a call only when the call
stacks many, one that mixes the queries of a key set only above 8 queries, and says that a type
keeping state between calls does so (not only that two calls differ)."""

from __future__ import annotations

import torch
from torch import nn

from canvas_core.testing import check_attention_type

torch.set_num_threads(1)


class _Attend(nn.Module):
    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def attend(self, q, k, v):
        if k.shape[1] == 0:
            return torch.zeros_like(q)
        return self.proj(torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, -1) @ v)


class RowsAbove8(_Attend):
    def forward(self, q, k, v):
        o = self.attend(q, k, v)
        return o + v.mean(dim=(0, 1), keepdim=True) if q.shape[0] > 8 else o


class QueriesAbove8(_Attend):
    def forward(self, q, k, v):
        o = self.attend(q, k, v)
        return o + q.mean(1, keepdim=True) if q.shape[1] > 8 else o


class Remembers(_Attend):
    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__(d_model, n_heads, dropout)
        self.last = None

    def forward(self, q, k, v):
        o = self.attend(q, k, v)
        if self.last is not None:
            o = o + self.last
        self.last = v.detach().mean(dim=(0, 1), keepdim=True)
        return o


def test_a_type_mixing_many_stacked_rows_fails_dependency_exactness():
    report = check_attention_type(RowsAbove8, raise_on_failure=False)
    msg = report.failed.get("dependency exactness", "")
    assert "16 key sets of 2 queries x 3 keys at batch 3" in msg and "48 rows stacked in one call" in msg, report.failed


def test_a_type_mixing_queries_above_8_names_the_query_dependency():
    report = check_attention_type(QueriesAbove8, raise_on_failure=False)
    msg = report.failed.get("dependency exactness", "")
    assert "query 0's output depends on query 1" in msg and "72 queries x 72 keys" in msg, report.failed


def test_a_type_keeping_state_fails_deterministic_saying_why():
    report = check_attention_type(Remembers, raise_on_failure=False)
    msg = report.failed.get("deterministic", "")
    assert "keeps state between calls" in msg and "after one call with other inputs" in msg, report.failed
    assert "keeps state between calls" in report.skipped.get("dependency exactness", ""), report.skipped
