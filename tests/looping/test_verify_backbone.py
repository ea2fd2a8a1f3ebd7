"""`verify_structure` on a grafted backbone with an installed topology: the installed attention
core (shared softmax kernels, each block's gated modules) reads only what the topology declares;
a leaking plugin type inside the backbone is flagged, naming the block and the future frame."""

from __future__ import annotations

import torch
from torch import nn

import canvas_core
from canvas_core.looping import get_adapter, graft_looped_blocks
from canvas_core.plugins import register_attention, unregister_attention
from canvas_core.schema import CanvasTopology, Connection
from tests.looping._backbone_setup import causal_temporal, inputs, make, user_layout


class _ChunkLeak(nn.Module):
    """Honours key_mask on up to 6 keys (what the install-time check uses), then adds the mean of
    every key it is given."""

    key_mask_exact = True

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, queries, keys, values, key_mask=None):
        m = key_mask.to(values.dtype)
        out = (queries + self.proj((m @ values) / m.sum(1, keepdim=True).clamp_min(1.0))) * key_mask.any(1)[None, :, None]
        return out + values.mean(1, keepdim=True) if keys.shape[1] > 6 else out


def _installed(extra_fn):
    m = make("cogvideox")
    kw = inputs("cogvideox")
    graft_looped_blocks(m, max_loops=2, freeze="none")
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, kw), 1)
    topo = causal_temporal(["top", "bottom", "extra"])
    topo = CanvasTopology(connections=list(topo.connections) + [Connection("top", "bottom", t_src=0, t_dst=0, fn=extra_fn)])
    ad.install_topology(m, topo, tokens)
    return m


def test_a_causal_backbone_verifies_and_names_the_closed_gates():
    report = canvas_core.verify_structure(_installed("pooling"))
    assert report.ok and report.exact, str(report)
    assert report.parts == ["backbone attention", "block 0", "block 1"]
    assert any("'pooling'" in n and "gate at 0" in n for n in report.notes)


def test_a_leaking_type_inside_the_backbone_is_flagged(monkeypatch):
    monkeypatch.setattr("canvas_core.runtime.type_probe.probe_runtime_shapes", lambda *a, **k: None)  # a cheat the build sample missed
    register_attention("chunk_leak", _ChunkLeak)
    try:
        torch.manual_seed(0)
        report = canvas_core.verify_structure(_installed("chunk_leak"))
    finally:
        unregister_attention("chunk_leak")
    assert not report.ok
    assert {d.fn for d in report.undeclared} == {"chunk_leak"}
    assert {d.where for d in report.undeclared} == {"block 0", "block 1"}
    fut = report.future_reads
    assert fut and all((d.query_region, d.key_region) == ("top", "bottom") for d in fut)
    assert "region top frame 0 reads region bottom frame 1 (future)" in str(report)


class _MaskIgnoring(nn.Module):
    """Declares key_mask_exact but reads every key it is given."""

    key_mask_exact = True

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, queries, keys, values, key_mask=None):
        return queries + self.proj(values.mean(1, keepdim=True))


def test_a_mask_ignoring_type_is_refused_at_install_naming_the_connection_once():
    import pytest

    from canvas_core.errors import BackboneError

    register_attention("mask_ignoring_audit", _MaskIgnoring)
    try:
        with pytest.raises(BackboneError) as err:
            _installed("mask_ignoring_audit")
    finally:
        unregister_attention("mask_ignoring_audit")
    msg = str(err.value)
    where = "(fn 'mask_ignoring_audit')"
    assert "cannot run inside 'cogvideox'" in msg and "key_mask_exact" in msg
    assert msg.count(where) == 1, msg  # was: "connection #k ... cannot run inside ...: connection #k ...: ..."


class _ClosedGateLeak(_MaskIgnoring):
    """Reads every key it is given, behind a zero-initialised gate."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__(d_model, n_heads, dropout)
        self.alpha = nn.Parameter(torch.zeros(d_model))

    def forward(self, queries, keys, values, key_mask=None):
        return torch.tanh(self.alpha) * super().forward(queries, keys, values, key_mask)


def test_a_leak_behind_a_closed_gate_is_refused_at_install():
    import pytest

    from canvas_core.errors import BackboneError

    register_attention("closed_gate_leak_audit", _ClosedGateLeak)
    try:
        with pytest.raises(BackboneError, match="reads outside the linked keys"):
            _installed("closed_gate_leak_audit")
    finally:
        unregister_attention("closed_gate_leak_audit")
