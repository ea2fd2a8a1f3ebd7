"""The conformance kit checks a ``reads_keys = False`` declaration (the runtime skips its NaN
guard for such a type, so a false declaration would let a NaN key reach unlinked queries)."""

from __future__ import annotations

import pytest

from canvas_core.testing import check_attention_type

torch = pytest.importorskip("torch")
from canvas_core.attention.simple import CrossAttention  # noqa: E402


class _ClaimsBlindButReads(CrossAttention):
    """Softmax attention that wrongly declares its output independent of keys and values."""

    reads_keys = False


class _ClaimsBlindButTouches(CrossAttention):
    """Ignores keys and values except for a ``0 *`` term (the usual way to keep parameters used
    under DDP): no gradient reaches them, but a NaN key makes every row NaN."""

    reads_keys = False

    def forward(self, queries, keys, values, key_mask=None):
        return self.q_proj(queries) + 0.0 * (keys.sum() + values.sum())


def test_a_type_whose_output_a_nan_key_reaches_fails_the_key_blind_check():
    report = check_attention_type(_ClaimsBlindButTouches, raise_on_failure=False)
    assert "NaN key" in report.failed.get("reads no key", "")


def test_none_passes_the_key_blind_check():
    report = check_attention_type("none")
    assert "reads no key" in report.passed


def test_a_false_key_blind_declaration_fails_naming_the_declaration():
    report = check_attention_type(_ClaimsBlindButReads, raise_on_failure=False)
    assert "reads no key" in report.failed
    assert "reads_keys = False" in report.failed["reads no key"]
    assert "keys" in report.failed["reads no key"]


def test_a_type_without_the_declaration_is_not_checked_for_it():
    report = check_attention_type("cross_attention")
    assert report.ok and "reads no key" not in {*report.passed, *report.skipped, *report.failed}
