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


class ClosedGateLeak(MixesRows):
    """MixesRows behind a zero-initialised gate (like ``gated``'s alpha): it reads nothing at
    initialisation, and every other key set of the call once training opens the gate."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__(d_model, n_heads, dropout)
        self.alpha = nn.Parameter(torch.zeros(d_model))

    def forward(self, queries, keys, values):
        return torch.tanh(self.alpha) * super().forward(queries, keys, values)


class ClosedGateFalseExact(ClosedGateLeak):
    key_mask_exact = True

    def forward(self, queries, keys, values, key_mask=None):
        return super().forward(queries, keys, values)


@pytest.mark.parametrize("cls", [ClosedGateLeak, ClosedGateFalseExact])
def test_a_closed_gate_does_not_hide_a_leak(host, cls):
    # audit: the probe saw no read at all at initialisation, so 'dependency exactness' was skipped
    # ("nothing to check"), the kit passed and a canvas layer built it
    from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection
    from canvas_core.errors import AttentionContractError

    P.register_attention("k23_gate_leak", cls)
    report = check_attention_type("k23_gate_leak", raise_on_failure=False)
    assert "dependency exactness" in report.failed, report.summary()
    assert "closed gates" in report.failed["dependency exactness"]
    assert "a leak across key sets" in report.failed["dependency exactness"]
    layout = CanvasLayout(T=2, H=2, W=2, d_model=16, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})
    topo = CanvasTopology(connections=[Connection("b", "a", t_src=0, t_dst=0, fn="k23_gate_leak"),
                                       Connection("a", "a", t_src=0, t_dst=0, fn="k23_gate_leak")])
    with pytest.raises(AttentionContractError, match=r"#0 'b' -> 'a'.*reads outside the linked keys"):
        CanvasAttention(topo, layout, n_heads=2)


def test_builtin_gated_is_probed_with_its_gate_open_and_stays_closed(host):
    from canvas_core.attention import GatedAttention

    report = check_attention_type("gated", d_model=16, n_heads=2)
    assert "dependency exactness" in report.passed  # was skipped: gate_alpha = 0 reads nothing
    module = GatedAttention(16, 2)
    from canvas_core.runtime.type_probe import probe_attention_module

    probe_attention_module(module, "gated", 16, "probe")
    assert not module.gate_alpha.detach().any()  # restored


class BatchStat(Scan):
    """Per key set, but a BatchNorm over the stacked rows: in training mode it mixes key sets."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__(d_model, n_heads, dropout)
        self.bn = nn.BatchNorm1d(d_model)
        self.drop = nn.Dropout(0.5)

    def forward(self, queries, keys, values):
        return self.bn(self.drop(super().forward(queries, keys, values)).transpose(1, 2)).transpose(1, 2)


class Dropped(Scan):
    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__(d_model, n_heads, dropout)
        self.drop = nn.Dropout(0.5)

    def forward(self, queries, keys, values):
        return self.drop(super().forward(queries, keys, values))


def test_a_leak_in_training_mode_only_is_refused_at_build(host):
    # audit: the build probe ran in eval mode only, so a batch statistic over the stacked key sets
    # was built and, trained, made a frame read the next one
    from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection
    from canvas_core.errors import AttentionContractError

    layout = CanvasLayout(T=2, H=2, W=2, d_model=16, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})
    P.register_attention("k23_batch_stat", BatchStat)
    P.register_attention("k23_dropped", Dropped)
    CanvasAttention(CanvasTopology(connections=[Connection("b", "a", t_src=0, t_dst=0, fn="k23_dropped")]), layout,
                    n_heads=2)  # dropout keeps rows apart: built
    with pytest.raises(AttentionContractError, match=r"#0 'b' -> 'a'.*\(in training mode\)"):
        CanvasAttention(CanvasTopology(connections=[Connection("b", "a", t_src=0, t_dst=0, fn="k23_batch_stat")]),
                        layout, n_heads=2)
