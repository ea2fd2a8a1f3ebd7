"""t19: the kit's ``self_gated`` property, run for a type declaring ``self_gated = True``: as built,
it outputs exactly 0 (a backbone install drops the block's gate for it); ``reads no key`` says the fix."""

from __future__ import annotations

import torch

from canvas_core.testing import check_attention_type
from tests._hostile_types import KeyBlindNaN, PlainSoftmax, SelfGatedHonest, SelfGatedLiar

torch.set_num_threads(1)


def test_a_false_self_gated_declaration_fails_the_kit_naming_the_output():
    report = check_attention_type(SelfGatedLiar, d_model=16, n_heads=2, raise_on_failure=False)
    failure = report.failed["self_gated"]
    assert "declares self_gated = True" in failure and "max |output|" in failure, failure
    assert "drop the self_gated declaration" in failure, failure


def test_a_true_self_gated_declaration_passes_and_an_undeclared_type_is_not_checked():
    honest = check_attention_type(SelfGatedHonest, d_model=16, n_heads=2, raise_on_failure=False)
    assert "self_gated" in honest.passed, honest.failed
    gated = check_attention_type("gated", d_model=16, n_heads=2, raise_on_failure=False)
    assert gated.ok and "self_gated" in gated.passed, gated.failed
    plain = check_attention_type(PlainSoftmax, d_model=16, n_heads=2, raise_on_failure=False)
    assert "self_gated" not in plain.passed and "self_gated" not in plain.failed


def test_a_false_reads_keys_declaration_fails_with_the_fix():
    failure = check_attention_type(KeyBlindNaN, d_model=16, n_heads=2, raise_on_failure=False).failed["reads no key"]
    assert "a NaN key and an inf value change its output" in failure and "drop the reads_keys = False" in failure
