"""The conformance kit holds plugin types to the issue-23 rule by default: dependency exactness
(a leak across key sets fails, naming the query and the key), key_mask respected by a type that
declares ``key_mask_exact``, and trainability."""

from __future__ import annotations

import pytest

import canvas_core.plugins as P
from canvas_core.testing import check_attention_type

torch = pytest.importorskip("torch")
nn = torch.nn


class Scan(nn.Module):
    """Per-key-set scan (no key_mask): running sum of projected values, read at the last key."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.v = nn.Linear(d_model, d_model)

    def forward(self, queries, keys, values):
        run = torch.cumsum(self.v(values), dim=1)[:, -1:] / keys.shape[1]
        return run.expand_as(queries) * torch.sigmoid(queries)


class MixesRows(Scan):
    def forward(self, queries, keys, values):  # reads every row of a stacked call
        return super().forward(queries, keys, values) + values.mean(dim=(0, 1), keepdim=True)


class FalseExact(Scan):
    key_mask_exact = True  # a promise it breaks: the mask is only applied to the union

    def forward(self, queries, keys, values, key_mask=None):
        if key_mask is not None:
            values = values * key_mask.any(0)[None, :, None].to(values.dtype)
        return super().forward(queries, keys, values)


class Frozen(Scan):
    def forward(self, queries, keys, values):  # parameters on a detached path: cannot learn
        return super().forward(queries, keys, values).detach() + 0 * queries


class DeadGates(Scan):
    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__(d_model, n_heads, dropout)
        self.a = nn.Parameter(torch.zeros(()))
        self.b = nn.Parameter(torch.zeros(()))

    def forward(self, queries, keys, values):  # two zero gates in series: every gradient is 0
        return self.a * self.b * super().forward(queries, keys, values)


def test_per_key_set_scan_passes_every_default_property(host):
    P.register_attention("k23_scan", Scan)
    report = check_attention_type("k23_scan", strict=True)
    assert report.ok
    assert {"dependency exactness", "key_mask respected", "trainable"} <= set(report.passed)
    assert report.details["calling convention"] == "per_key_set"


@pytest.mark.parametrize("cls,prop,msg", [
    (MixesRows, "dependency exactness", r"query 0's output depends on key 3, which its key set \[0, 1, 2\] excludes"),
    (FalseExact, "dependency exactness", r"depends on key \d, which its key set .* excludes \(a leak across key sets\)"),
    (FalseExact, "key_mask respected", r"declares key_mask_exact = True but .* does not honour key_mask"),
    (Frozen, "trainable", "does not depend on the type.s parameters"),
    (DeadGates, "trainable", "left the output unchanged: no parameter receives a gradient"),
])
def test_kit_fails_a_type_that_breaks_the_rule(host, cls, prop, msg):
    P.register_attention("k23_bad", cls)
    report = check_attention_type("k23_bad", raise_on_failure=False)
    assert prop in report.failed and not report.ok
    assert pytest.importorskip("re").search(msg, report.failed[prop]), report.failed[prop]
    with pytest.raises(AssertionError, match=rf"'k23_bad'.*\[{prop}\]"):
        check_attention_type("k23_bad")


def test_builtin_scans_are_exact_through_the_runtime(host):
    for name in ("perceiver", "rwkv", "hyena", "linear_attention", "copy", "local_attention"):
        report = check_attention_type(name, d_model=16, n_heads=2)
        assert "dependency exactness" in report.passed and report.details["calling convention"] == "per_key_set"
