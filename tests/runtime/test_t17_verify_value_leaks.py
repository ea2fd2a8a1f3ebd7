"""``verify_structure`` checks reads by value as well as by gradient.

Regression (a hostile review): a plugin type whose read has no gradient path passed
``verify_structure(layer).ok``: ``o + 0.5 * o.detach()`` with the stacked key-set rows swapped in
pairs, or ``o / rms(o.detach())`` over the whole call (every row and every sample).  The build probe
refuses such types when its small inputs show the leak; to build the layer here it is switched off
(``probe_attention_module`` patched to do nothing), standing in for a type that leaks only on inputs
larger than the probe's.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import canvas_core.runtime.verify_values as verify_values
from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection, verify_structure
from canvas_core.plugins import list_attention_types, register_attention
from canvas_core.testing import isolated_plugins

torch.set_num_threads(1)

LAYOUT = CanvasLayout(T=5, spatial_shape=(3, 2), d_model=16,
                      regions={"video": (0, 5, 0, 2, 0, 2), "action": (0, 5, 2, 3, 0, 1)})


class Reads(nn.Module):
    """A correct per-key-set type: softmax attention over the keys it is given, then a projection."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.lin = nn.Linear(d_model, d_model)

    def forward(self, q, k, v):
        if k.shape[1] == 0:
            return self.lin(q) * 0
        return self.lin(torch.softmax(q @ k.transpose(1, 2) / k.shape[-1] ** 0.5, -1) @ v)


class PairSwap(Reads):
    """Adds the detached output of the neighbouring stacked key set (rows swapped in pairs)."""

    def forward(self, q, k, v):
        o = super().forward(q, k, v)
        if o.shape[0] % 2 == 0 and o.shape[0] > 0:
            o = o + 0.5 * o.detach().reshape(-1, 2, *o.shape[1:]).flip(1).reshape(o.shape)
        return o


class DetachedNorm(Reads):
    """Divides by the detached RMS of the whole call: every row reads every row and every sample."""

    def forward(self, q, k, v):
        o = super().forward(q, k, v)
        return o / (o.detach().pow(2).mean().sqrt() + 1e-6)


def _layer(monkeypatch, name, cls):
    monkeypatch.setattr("canvas_core.runtime.canvas_attention.probe_attention_module", lambda *a, **k: None)
    register_attention(name, cls)
    topo = CanvasTopology(connections=[Connection("action", "video", t_src=0, t_dst=-1, fn=name)])
    torch.manual_seed(0)
    return CanvasAttention(topo, LAYOUT, n_heads=2)


@pytest.mark.parametrize("cls", [PairSwap, DetachedNorm])
def test_a_read_without_a_gradient_path_fails_the_verification(monkeypatch, cls):
    with isolated_plugins(autoload=False):
        report = verify_structure(_layer(monkeypatch, "detached_t", cls))
    assert not report.ok
    assert report.undeclared and all(d.by == "value" for d in report.undeclared), str(report)
    # the type updates the action queries only: every entry names them, the type and an undeclared key
    assert {d.query_region for d in report.undeclared} == {"action"}
    assert {d.fn for d in report.undeclared} <= {"detached_t", None}
    assert any(d.fn == "detached_t" for d in report.undeclared)
    declared = {(t, t - 1) for t in range(5)}  # action frame t reads video frame t - 1 (and itself)
    for d in report.undeclared:
        assert (d.key_region, d.key_frame) != ("action", d.query_frame)
        assert not (d.key_region == "video" and (d.query_frame, d.key_frame) in declared), d
    text = str(report)
    assert "structure verification FAILED" in text and "by value" in text and "'detached_t'" in text
    data = report.to_dict()
    json.dumps(data)
    assert data["ok"] is False and {d["by"] for d in data["undeclared"]} == {"value"}


def test_the_stacked_key_sets_swapped_read_a_neighbouring_frame(monkeypatch):
    with isolated_plugins(autoload=False):
        report = verify_structure(_layer(monkeypatch, "pair_t", PairSwap))
    pairs = {(d.query_frame, d.key_region, d.key_frame) for d in report.undeclared}
    # the action query of frame t (key set: video frame t - 1) got the output of another frame's
    # key set: it moves with the video frame that key set reads, and with that frame's action query
    assert any(k == "video" and abs(kf - (qf - 1)) == 1 for qf, k, kf in pairs), pairs
    assert any(k == "action" and abs(kf - qf) == 1 for qf, k, kf in pairs), pairs


def test_a_detached_statistic_over_the_batch_is_named_as_reading_another_sample(monkeypatch):
    with isolated_plugins(autoload=False):
        report = verify_structure(_layer(monkeypatch, "norm_t", DetachedNorm))
    other = [d for d in report.undeclared if d.key_region == verify_values.OTHER_SAMPLE]
    assert other and all(d.key_frame == -1 and d.by == "value" for d in other)
    assert len({(d.where, d.query_region, d.query_frame) for d in other}) == len(other)  # said once
    assert "reads another sample of the batch by value" in str(report)


class Stack(nn.Module):
    """A canvas layer with a residual, plus ``leak``: a detached roll of the canvas by one position."""

    def __init__(self, leak=None) -> None:
        super().__init__()
        self.layer = CanvasAttention(CanvasTopology(connections=[Connection("video", "video", t_src=0, t_dst=0),
                                                                 Connection("action", "action", t_src=0, t_dst=0)]),
                                     LAYOUT, n_heads=2)
        self.leak = leak

    def forward(self, x):
        out = x + self.layer(x)
        if self.leak == "roll":
            out = out + 0.1 * x.detach().roll(1, dims=1)
        elif self.leak == "noise":  # varies between identical calls: nothing can be blamed on a read
            out = out + 1e-3 * torch.randn_like(out).detach()
        return out


def test_a_model_is_checked_by_value_too_and_noise_is_not_blamed():
    torch.manual_seed(0)
    report = verify_structure(Stack("roll"))
    assert not report.ok and report.undeclared and all(d.by == "value" for d in report.undeclared)
    assert all(d.where == "model" for d in report.undeclared)
    torch.manual_seed(0)
    clean = verify_structure(Stack())
    assert clean.ok and not clean.undeclared, str(clean)
    torch.manual_seed(0)
    noisy = verify_structure(Stack("noise"))
    assert noisy.ok and any("non-deterministic" in n for n in noisy.notes), str(noisy)


def test_large_canvases_value_check_a_capped_number_of_groups(monkeypatch):
    monkeypatch.setattr(verify_values, "LARGE_CANVAS", 16)  # this 30-position canvas counts as large
    monkeypatch.setattr(verify_values, "GROUPS_PER_PROBE", 1)
    calls = []
    real = verify_values.value_groups
    monkeypatch.setattr(verify_values, "value_groups",
                        lambda *a: calls.append(real(*a)) or calls[-1])
    torch.manual_seed(0)
    report = verify_structure(Stack("roll"), probes=2)
    assert calls and all(len(g) <= 2 for g in calls)
    assert not report.ok  # two groups still catch a read of the neighbouring position


TYPES = [t for t in list_attention_types() if t not in ("cogvideox", "canvas_read", "canvas_write")]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["video", "action"]), st.sampled_from(["video", "action"]),
                          st.integers(-1, 0), st.sampled_from(TYPES)), min_size=1, max_size=3,
                unique_by=lambda c: c[:3]),
       st.integers(0, 2 ** 16))
def test_builtin_types_on_random_topologies_stay_ok(conns, seed):
    assert {"mamba", "hyena", "rwkv", "linear_attention"} <= set(TYPES)
    topo = CanvasTopology(connections=[Connection(s, d, t_src=0, t_dst=dt, fn=fn) for s, d, dt, fn in conns])
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = verify_structure(CanvasAttention(topo, LAYOUT, n_heads=2), probes=1, seed=seed)
    assert report.ok and not report.undeclared, f"{conns}:\n{report}"
