"""`verify_structure`: builtin types pass on causal topologies; a leaking plugin type, a dead
declared link and a leak deep in a stack are flagged, named; sampling is stated; the declared
pattern (one layer and the L-hop closure) equals a dense reference."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import canvas_core
from canvas_core.compiler.lowering import lower
from canvas_core.errors import CanvasError
from canvas_core.plugins import list_attention_types, register_attention
from canvas_core.runtime.canvas_attention import CanvasAttention
from canvas_core.runtime.verify_probe import declared_rows
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection
from canvas_core.testing import isolated_plugins

LAYOUT = CanvasLayout(T=4, spatial_shape=(2, 2), d_model=16,
                      regions={"a": (0, 4, 0, 1, 0, 2), "b": (0, 4, 1, 2, 0, 2)})


def causal(fn="cross_attention", regions="ab"):
    """Every region reads every region at the same and the previous frame."""
    return CanvasTopology(connections=[Connection(x, y, t_src=0, t_dst=dt, fn=fn)
                                       for x in regions for y in regions for dt in (0, -1)])


class ReadsEverything(nn.Module):
    """A plugin-style type that claims to honour key_mask exactly, and does on short sequences
    (the build-time check calls it with 6 keys), but past 6 keys adds the mean of every key it
    is given: a chunking bug that, inside a causal topology, reads the future."""

    key_mask_exact = True

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, queries, keys, values, key_mask=None):
        m = key_mask.to(values.dtype)
        own = (m @ values) / m.sum(1, keepdim=True).clamp_min(1.0)
        out = (queries + self.proj(own)) * key_mask.any(1)[None, :, None]
        if keys.shape[1] > 6:
            out = out + values.mean(1, keepdim=True)
        return out


class ReadsNothing(nn.Module):
    """A type that ignores its keys: its declared links carry no signal."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, queries, keys, values):
        return self.proj(queries)


def test_softmax_types_pass_exactly_on_a_causal_topology():
    for fn in ("cross_attention", "self_attention"):
        torch.manual_seed(0)
        report = canvas_core.verify_structure(CanvasAttention(causal(fn), LAYOUT, n_heads=2))
        assert report.ok and report.exact and not report.undeclared and not report.dead, str(report)
        assert report.hops == 1 and report.parts == ["layer"]
        assert "every one of the 16 query positions" in report.sampling


def test_every_builtin_type_reads_no_undeclared_position():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        types = list_attention_types()
        assert {"cross_attention", "perceiver", "mamba", "hyena", "pooling"} <= set(types)
        for fn in types:
            torch.manual_seed(0)
            topo = CanvasTopology(connections=list(causal().connections) + [
                Connection("a", "b", t_src=0, t_dst=dt, fn=fn) for dt in (0, -1)])
            report = canvas_core.verify_structure(CanvasAttention(topo, LAYOUT, n_heads=2), probes=1)
            assert report.ok and not report.undeclared, f"{fn}:\n{report}"
            assert not report.future_reads


def test_a_leaking_plugin_type_is_flagged_naming_it_and_the_future_frame(monkeypatch):
    monkeypatch.setattr("canvas_core.runtime.type_probe.probe_runtime_shapes", lambda *a, **k: None)  # a cheat the build sample missed
    with isolated_plugins(autoload=False):
        register_attention("leaky_mean", ReadsEverything)
        topo = CanvasTopology(connections=[Connection("b", "a", t_src=0, t_dst=0, fn="leaky_mean"),
                                           Connection("a", "a", t_src=0, t_dst=0)])
        torch.manual_seed(0)
        report = canvas_core.verify_structure(CanvasAttention(topo, LAYOUT, n_heads=2))
    assert not report.ok
    assert {d.fn for d in report.undeclared} == {"leaky_mean"}
    future = {(d.query_region, d.query_frame, d.key_region, d.key_frame) for d in report.future_reads}
    assert future == {("b", q, "a", k) for q in range(4) for k in range(4) if k > q}
    text = str(report)
    assert "region b frame 1 reads region a frame 3 (future)" in text and "'leaky_mean'" in text
    data = report.to_dict()
    json.dumps(data)
    assert data["ok"] is False and data["future_reads"] == 6


def test_a_dead_declared_link_is_flagged():
    torch.manual_seed(0)
    topo = CanvasTopology(connections=[Connection("a", "b", fn="deaf"), Connection("b", "a")])
    layer = CanvasAttention(topo, LAYOUT, n_heads=2, attention_factory=lambda f, **kw: ReadsNothing(16))
    report = canvas_core.verify_structure(layer)
    assert report.ok and not report.undeclared  # reported; a failure only with require_signal
    assert not canvas_core.verify_structure(layer, require_signal=True).ok
    (dead,) = report.dead
    assert (dead.connection, dead.src, dead.dst, dead.fn, dead.whole) == (0, "a", "b", "deaf", True)
    assert "connection #0 'a' -> 'b' (fn 'deaf') is declared but carries no signal" in str(report)


class _Stack(nn.Module):
    """A small causal world model: two canvas layers with residuals and a per-position MLP."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)
            x = x + self.mlp(x)
        return x


def test_a_stack_is_judged_by_the_closure_and_a_leak_deep_in_it_is_found(monkeypatch):
    monkeypatch.setattr("canvas_core.runtime.type_probe.probe_runtime_shapes", lambda *a, **k: None)  # a cheat the build sample missed
    torch.manual_seed(0)
    topo = CanvasTopology(connections=[Connection(x, y, t_src=0, t_dst=-1) for x in "ab" for y in "ab"]
                          + [Connection(x, x, t_src=0, t_dst=0) for x in "ab"])
    good = _Stack([CanvasAttention(topo, LAYOUT, n_heads=2) for _ in range(2)])
    report = canvas_core.verify_structure(good)
    assert report.ok and report.hops == 2, str(report)
    # one layer alone may not read two frames back; the stack of two may
    one = canvas_core.verify_structure(good, LAYOUT, topo, layers=1)
    assert not one.ok and not one.future_reads
    assert {d.key_frame for d in one.undeclared if d.query_frame == 3} == {1}
    leaky = CanvasTopology(connections=list(topo.connections) + [Connection("b", "a", t_src=0, t_dst=0, fn="leak")])
    bad = _Stack([CanvasAttention(topo, LAYOUT, n_heads=2),
                  CanvasAttention(leaky, LAYOUT, n_heads=2, attention_factory=lambda f, **kw: ReadsEverything(16))])
    report = canvas_core.verify_structure(bad, LAYOUT, topo, layers=2)
    assert report.future_reads and all(d.fn is None for d in report.undeclared)
    assert ("b", 0, "a", 3) in {(d.query_region, d.query_frame, d.key_region, d.key_frame) for d in report.future_reads}


def test_large_canvases_are_sampled_and_say_so(monkeypatch):
    monkeypatch.setattr("canvas_core.runtime.type_probe.probe_runtime_shapes", lambda *a, **k: None)  # a cheat the build sample missed
    lay = CanvasLayout(T=6, spatial_shape=(4, 4), d_model=8,
                       regions={"a": (0, 6, 0, 2, 0, 4), "b": (0, 6, 2, 4, 0, 4)})
    torch.manual_seed(0)
    with isolated_plugins(autoload=False):
        register_attention("leaky_mean", ReadsEverything)
        topo = CanvasTopology(connections=list(causal().connections)
                              + [Connection("b", "a", t_src=0, t_dst=0, fn="leaky_mean")])
        report = canvas_core.verify_structure(CanvasAttention(topo, lay, n_heads=2), max_exact=32, samples=20, probes=1)
    assert not report.exact and "sampled" in report.sampling and "12 (region, frame) cells" in report.sampling
    assert "sampled" in str(report) and report.future_reads


def test_bad_arguments_are_canvas_errors():
    layer = CanvasAttention(causal(), LAYOUT, n_heads=2)
    for kw in ({"probes": 0}, {"rtol": 2.0}, {"samples": True}, {"layers": 0}):
        with pytest.raises(CanvasError):
            canvas_core.verify_structure(layer, **kw)
    with pytest.raises(CanvasError, match="nn.Module"):
        canvas_core.verify_structure(lambda x: x)
    with pytest.raises(CanvasError, match="no CanvasAttention"):
        canvas_core.verify_structure(nn.Linear(16, 16))


def test_training_mode_is_restored():
    layer = CanvasAttention(causal(), LAYOUT, n_heads=2).train()
    canvas_core.verify_structure(layer, probes=1)
    assert layer.training


# --- the declared pattern against a dense reference ---------------------------------------------
def _dense_closure(plans, n):
    acc = np.eye(n, dtype=bool)
    for plan in plans:  # out = L_k(...L_1(x)): rows of the last layer first
        m = plan.to_dense().numpy() > 0
        step = m | np.eye(n, dtype=bool)
        acc = (step.astype(np.int64) @ acc.astype(np.int64)) > 0
    return acc


@pytest.mark.filterwarnings("ignore:connection .* links nothing")
@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from("abc"),
                          st.one_of(st.none(), st.integers(-2, 1)), st.one_of(st.none(), st.integers(-2, 1)),
                          st.sampled_from(["cross_attention", "pooling"])), min_size=1, max_size=5),
       st.integers(1, 3))
def test_declared_rows_equal_the_dense_closure(conns, hops):
    lay = CanvasLayout(T=3, spatial_shape=(3,), d_model=4,
                       regions={"a": (0, 3, 0, 1), "b": (0, 3, 1, 2), "c": (1, 3, 2, 3)})
    topo = CanvasTopology(connections=[Connection(s, d, t_src=ts, t_dst=td, fn=fn) for s, d, ts, td, fn in conns])
    plan = lower(topo, lay)
    q = np.arange(plan.n)
    got = declared_rows([plan] * hops, q)
    np.testing.assert_array_equal(got, _dense_closure([plan] * hops, plan.n))
    for fn in plan.groups:
        want = (plan.to_dense(fn=fn).numpy() > 0) | np.eye(plan.n, dtype=bool)
        np.testing.assert_array_equal(declared_rows([plan], q, fn=fn), want)
    for ci in range(len(topo.connections)):
        one = CanvasTopology(connections=[topo.connections[ci]]).to_attention_mask(lay).numpy() > 0
        np.testing.assert_array_equal(declared_rows([plan], q, connection=ci, with_self=False), one)


def test_a_type_silent_at_initialisation_is_a_note_not_a_dead_link():
    """A ``gated`` type at initialisation outputs 0: in a layer it is probed with its own closed
    gate opened (and closed again after); in a whole model it is a note, not a dead link."""
    torch.manual_seed(0)
    topo = CanvasTopology(connections=list(causal().connections) + [Connection("a", "b", t_src=0, t_dst=0, fn="gated")])
    layer = CanvasAttention(topo, LAYOUT, n_heads=2)
    for model in (layer, _Stack([CanvasAttention(topo, LAYOUT, n_heads=2)] * 2)):
        report = canvas_core.verify_structure(model, probes=1)
        assert report.ok and not report.dead and canvas_core.verify_structure(model, require_signal=True).ok
        if model is layer:
            assert any("'gated' gates itself" in n and "gate_alpha" in n for n in report.notes), report.notes
            assert not any(p.any() for n, p in layer.named_parameters() if n.endswith("gate_alpha"))
        else:
            assert any("'gated'" in n and "outputs 0" in n for n in report.notes)


def test_a_leak_behind_a_closed_self_gate_in_a_layer_is_found(monkeypatch):
    """A self-gated type closed at initialisation that reads every key of a call once it has
    more than 6 (past the build check): the layer's probe opens its gate and finds the reads."""
    monkeypatch.setattr("canvas_core.runtime.type_probe.probe_runtime_shapes", lambda *a, **k: None)  # a cheat the build sample missed
    from canvas_core.plugins import register_attention, unregister_attention
    from canvas_ref_toy_types import SelfGatedLeak  # registered by tests/conftest.py

    register_attention("self_gated_leak_layer", SelfGatedLeak)
    try:
        torch.manual_seed(0)
        topo = CanvasTopology(connections=list(causal().connections) + [
            Connection("a", "b", t_src=0, t_dst=-d, temporal_fill="drop", fn="self_gated_leak_layer") for d in range(3)])
        report = canvas_core.verify_structure(CanvasAttention(topo, LAYOUT, n_heads=2), probes=1)
    finally:
        unregister_attention("self_gated_leak_layer")
    assert not report.ok
    assert {d.fn for d in report.undeclared} == {"self_gated_leak_layer"}


@pytest.mark.parametrize("stacked", [False, True])
def test_a_layer_narrower_than_the_layout_is_probed_at_its_own_width(stacked):
    """LAYOUT.d_model is 16; a layer built at width 8 (alone or first in an nn.Sequential) is
    probed with (B, N, 8) inputs without passing d_model (it used to get 16 and fail)."""
    torch.manual_seed(0)
    layers = [CanvasAttention(causal(), LAYOUT, d_model=8, n_heads=2) for _ in range(2 if stacked else 1)]
    model = nn.Sequential(*layers) if stacked else layers[0]
    report = canvas_core.verify_structure(model, probes=1)
    assert report.ok and not report.undeclared, str(report)


def test_a_model_calling_its_layers_through_delta_is_verified_like_one_calling_them():
    """``x + layer.delta(x)`` bypasses forward hooks: the layers the model runs are observed
    through their update itself (before, 'ran none of its CanvasAttention layers')."""
    torch.manual_seed(0)
    topo = causal()
    layers = nn.ModuleList(CanvasAttention(topo, LAYOUT, n_heads=2) for _ in range(2))

    class ViaDelta(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = layers

        def forward(self, x):
            for layer in self.layers:
                x = x + layer.delta(x)
            return x

    report = canvas_core.verify_structure(ViaDelta())
    assert report.ok and report.hops == 2, str(report)


def test_a_model_whose_output_carries_no_gradient_is_not_verified():
    """An argmax head (or a detached output) leaves nothing to measure: the report fails and says
    so, instead of passing a model that, here, also reads the future."""
    torch.manual_seed(0)
    layers = [CanvasAttention(causal(), LAYOUT, n_heads=2) for _ in range(2)]

    class Argmax(_Stack):
        def forward(self, x):
            y = super().forward(x)
            return (y + y.flip(1)).argmax(-1, keepdim=True).to(y.dtype)  # every frame reads the last one

    report = canvas_core.verify_structure(Argmax(layers))
    assert not report.ok and "NOT VERIFIED" in str(report)


def test_progress_is_reported_part_by_part_up_to_the_total():
    torch.manual_seed(0)
    seen = []
    report = canvas_core.verify_structure(CanvasAttention(causal(), LAYOUT, n_heads=2), chunk=4,
                                          progress=lambda part, done, total: seen.append((part, done, total)))
    assert report.ok and seen
    by_part = {}
    for part, done, total in seen:
        by_part.setdefault(part, []).append((done, total))
    for part, steps in by_part.items():
        dones = [d for d, _ in steps]
        assert dones == sorted(dones) and dones[-1] == steps[-1][1] == 2 * LAYOUT.num_positions, part
    with pytest.raises(CanvasError, match="progress must be callable"):
        canvas_core.verify_structure(CanvasAttention(causal(), LAYOUT, n_heads=2), progress=3)


def test_a_type_whose_connections_link_nothing_is_not_blamed_on_a_gate():
    top = CanvasTopology(connections=[Connection("a", "a"), Connection("b", "a", fn="pooling", t_src=0, t_dst=-50)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the layer warns at build that the connection links nothing
        layer = CanvasAttention(top, LAYOUT, n_heads=2)
    text = str(canvas_core.verify_structure(layer))
    assert "link no (query, key) pair" in text and "gate that starts closed" not in text
