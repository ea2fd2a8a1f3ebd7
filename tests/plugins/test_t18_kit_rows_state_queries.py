"""Issue 23 audit: the conformance kit fails a type that mixes the rows of a call only when the call
stacks many, one that mixes the queries of a key set only above 8 queries, and says that a type
keeping state between calls does so (not only that two calls differ)."""

from __future__ import annotations

import torch
from canvas_core.testing import check_attention_type
from tests._hostile_types import KeepsState, ManyQueriesLeak, ManyRowsLeak

torch.set_num_threads(1)


def test_a_type_mixing_many_stacked_rows_fails_dependency_exactness():
    report = check_attention_type(ManyRowsLeak, raise_on_failure=False)
    msg = report.failed.get("dependency exactness", "")
    assert "16 key sets of 2 queries x 3 keys at batch 3" in msg and "48 rows stacked in one call" in msg, report.failed


def test_a_type_mixing_queries_above_8_names_the_query_dependency():
    report = check_attention_type(ManyQueriesLeak, raise_on_failure=False)
    msg = report.failed.get("dependency exactness", "")
    assert "query 0's output depends on query 1" in msg and "72 queries x 72 keys" in msg, report.failed


def test_a_type_keeping_state_fails_deterministic_saying_why():
    report = check_attention_type(KeepsState, raise_on_failure=False)
    msg = report.failed.get("deterministic", "")
    assert "keeps state between calls" in msg and "after one call with other inputs" in msg, report.failed
    assert "keeps state between calls" in report.skipped.get("dependency exactness", ""), report.skipped
