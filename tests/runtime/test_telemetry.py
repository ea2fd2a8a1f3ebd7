"""Telemetry against brute force: attention-mass shares and contribution norms per connection,
gate values, and nothing left on the model when recording ends."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from canvas_core import CanvasLayout, CanvasTopology, Connection
from canvas_core.runtime.canvas_attention import CanvasAttention
from canvas_core.runtime.telemetry import record_telemetry, telemetry


def _layout(T=3):
    return CanvasLayout(T=T, H=2, W=4, d_model=16, regions={"a": (0, T, 0, 1, 0, 4), "b": (0, T, 1, 2, 0, 4)})


@torch.no_grad()
def _brute_shares(layer, layout, topo, x):
    """Per connection: mean over its queries of the softmax mass on its keys (one softmax type,
    connections with distinct weights so that no pair is shared ambiguously)."""
    B, N, D = x.shape
    H, d = layer.n_heads, layer.head_dim
    q, k, v = layer.qkv(x).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
    masks = [CanvasTopology([c]).to_attention_mask(layout).double() for c in topo.connections]
    w = torch.stack(masks).amax(0)
    owner = torch.stack(masks).argmax(0)  # the connection with the largest weight per pair
    logits = (q @ k.transpose(-1, -2)).double() / math.sqrt(d) + torch.where(w > 0, w.log(), -math.inf)
    linked = (w > 0).any(-1)
    probs = torch.softmax(logits.masked_fill(~linked[:, None], 0.0), -1)
    out = {}
    for ci, mask in enumerate(masks):
        mine = ((owner == ci) & (w > 0)).double()
        rows = mine.sum(-1) > 0
        if rows.any():
            mass = (probs * mine).sum(-1).mean(dim=(0, 1))
            norm = torch.einsum("bhqn,bhnd->bqhd", probs * mine, v.double()).flatten(2).norm(dim=-1).mean(0)
            out[ci] = (float(mass[rows].mean()), float(norm[rows].mean()))
    return out


@settings(max_examples=15, deadline=None)
@given(st.lists(st.sampled_from([(None, None), (0, 0), (0, -1), (-1, 0)]), min_size=1, max_size=3),
       st.integers(0, 2**31 - 1))
def test_mass_share_and_norm_match_brute_force(offsets, seed):
    torch.manual_seed(seed)
    layout = _layout()
    conns = [Connection(src="b", dst="a", t_src=ts, t_dst=td, weight=1.0 + 0.37 * i)
             for i, (ts, td) in enumerate(offsets)]
    topo = CanvasTopology(conns)
    layer = CanvasAttention(topo, layout, n_heads=2).double()
    x = torch.randn(2, layout.num_positions, 16, dtype=torch.float64)
    got = telemetry(layer, x)
    want = _brute_shares(layer, layout, topo, x)
    for ci, (mass, norm) in want.items():
        label = f"CanvasAttention/#{ci} b->a [cross_attention]"
        assert got[f"{label}/mass_share"] == pytest.approx(mass, rel=1e-4, abs=1e-6)
        assert got[f"{label}/out_norm"] == pytest.approx(norm, rel=1e-4, abs=1e-6)


def test_shares_of_connections_reaching_the_same_queries_sum_to_one():
    torch.manual_seed(0)
    layout = _layout()
    topo = CanvasTopology([Connection(src="b", dst="a", t_src=0, t_dst=0),
                           Connection(src="b", dst="b", t_src=0, t_dst=0, weight=2.0)])
    layer = CanvasAttention(topo, layout, n_heads=2)
    vals = telemetry(layer, torch.randn(1, layout.num_positions, 16))
    shares = [v for k, v in vals.items() if k.endswith("/mass_share")]
    assert len(shares) == 2 and sum(shares) == pytest.approx(1.0, abs=1e-5)


def test_non_softmax_connections_report_their_weight_share_and_module_norm():
    torch.manual_seed(0)
    layout = _layout()
    topo = CanvasTopology([Connection(src="b", dst="a", t_src=0, t_dst=0, weight=3.0),
                           Connection(src="b", dst="b", t_src=0, t_dst=0, fn="pooling", weight=1.0)])
    layer = CanvasAttention(topo, layout, n_heads=2)
    vals = telemetry(layer, torch.randn(2, layout.num_positions, 16))
    assert vals["CanvasAttention/#1 b->b [pooling]/mass_share"] == pytest.approx(0.25)
    assert vals["CanvasAttention/#1 b->b [pooling]/out_norm"] > 0
    # the softmax connection: its type's mixing share (0.75) times all of its mass (one connection)
    assert vals["CanvasAttention/#0 b->a [cross_attention]/mass_share"] == pytest.approx(0.75, abs=1e-5)


def test_gates_are_reported_and_recording_leaves_no_hooks():
    layout = _layout()
    model = torch.nn.Sequential(CanvasAttention(CanvasTopology([Connection(src="b", dst="a")]), layout, n_heads=2))
    model.register_parameter("loop_gate", torch.nn.Parameter(torch.tensor([0.5, -0.25])))
    before = [dict(m._forward_pre_hooks) for m in model.modules()] + [dict(m._forward_hooks) for m in model.modules()]
    with record_telemetry(model) as tel:
        model(torch.randn(1, layout.num_positions, 16))
        model(torch.randn(1, layout.num_positions, 16))
    after = [dict(m._forward_pre_hooks) for m in model.modules()] + [dict(m._forward_hooks) for m in model.modules()]
    assert before == after
    vals = tel.values()
    assert vals["gate/loop_gate/0"] == 0.5 and vals["gate/loop_gate/1"] == -0.25
    assert tel.forwards == 2
    assert "share of output by connection" in tel.summary()


@pytest.mark.parametrize("how", ["whole", "blocks"])
def test_a_compiled_model_reports_under_the_plain_names(how):
    """``torch.compile``'s wrapper puts ``_orig_mod`` into every module and parameter name; the
    telemetry of a compiled model has the plain model's keys (and its values)."""
    layout = _layout()
    topo = CanvasTopology([Connection(src="b", dst="a"), Connection(src="a", dst="a", fn="pooling")])
    torch.manual_seed(0)
    model = torch.nn.Sequential(CanvasAttention(topo, layout, n_heads=2), CanvasAttention(topo, layout, n_heads=2))
    model.register_parameter("loop_gate", torch.nn.Parameter(torch.tensor([0.5])))
    x = torch.randn(1, layout.num_positions, 16)
    want = telemetry(model, x)
    torch._dynamo.reset()
    if how == "whole":
        compiled = torch.compile(model, backend="eager")
    else:
        compiled = torch.nn.Sequential(*(torch.compile(m, backend="eager") for m in model))
        compiled.register_parameter("loop_gate", model.loop_gate)
    got = telemetry(compiled, x)
    assert sorted(got) == sorted(want) and any(k.startswith("0/") for k in got) and "gate/loop_gate" in got
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k


def test_bad_arguments():
    from canvas_core.errors import CanvasTypeError

    with pytest.raises(CanvasTypeError, match="nn.Module"):
        with record_telemetry("model"):
            pass
    with pytest.raises(CanvasTypeError, match="max_queries"):
        with record_telemetry(torch.nn.Linear(2, 2), max_queries=0):
            pass


def test_a_model_calling_its_layers_through_delta_reports_the_same():
    """``x + layer.delta(norm(x))`` (the residual pattern of the rollout docs) bypasses forward
    hooks; telemetry observes the layer's update itself, so it sees both ways of calling."""
    layout = _layout()
    topo = CanvasTopology([Connection(src="b", dst="a"), Connection(src="a", dst="a", fn="pooling")])
    torch.manual_seed(0)
    layer = CanvasAttention(topo, layout, n_heads=2)

    class ViaDelta(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = layer

        def forward(self, x):
            return x + self.attn.delta(x)

    class ViaCall(ViaDelta):
        def forward(self, x):
            return self.attn(x)

    x = torch.randn(1, layout.num_positions, 16)
    want, got = telemetry(ViaCall(), x), telemetry(ViaDelta(), x)
    assert want and sorted(got) == sorted(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-6), k
    assert not layer.__dict__.get("_update_observers")  # nothing left on the layer


def test_series_keep_their_names_when_the_blocks_are_grafted():
    """A looped-block wrapper holds its block as ``original``: the telemetry keys of a grafted
    model are the plain model's (at one loop, with the same values), so logged series go on."""
    from canvas_core.looping import graft_looped_blocks

    layout = _layout()
    topo = CanvasTopology([Connection(src="b", dst="a"), Connection(src="a", dst="a", fn="pooling")])
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList(CanvasAttention(topo, layout, n_heads=2) for _ in range(2))

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return x

    model = Net()
    x = torch.randn(1, layout.num_positions, 16)
    want = telemetry(model, x)
    graft_looped_blocks(model, max_loops=2, inner_dim=16, latent_channels=16)
    from canvas_core import set_loops

    set_loops(model, 1)
    got = {k: v for k, v in telemetry(model, x).items() if not k.startswith("gate/")}
    assert sorted(got) == sorted(want) and any(k.startswith("blocks.0/") for k in got)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k


def test_a_data_parallel_model_reports_under_the_plain_names():
    """``DataParallel`` / ``DistributedDataParallel`` hold the model as ``module``: the telemetry
    of the wrapped model has the plain model's keys and values (DDP itself: tests/distributed);
    a submodule really called ``module`` keeps its name."""
    layout = _layout()
    topo = CanvasTopology([Connection(src="b", dst="a"), Connection(src="a", dst="a", fn="pooling")])
    torch.manual_seed(0)
    inner = torch.nn.Sequential(CanvasAttention(topo, layout, n_heads=2))
    model = torch.nn.Module()
    model.module = inner  # named like the wrapper's attribute, but part of the plain model
    model.register_parameter("loop_gate", torch.nn.Parameter(torch.tensor([0.5])))
    model.forward = lambda x: inner(x)
    x = torch.randn(1, layout.num_positions, 16)
    want = telemetry(model, x)
    assert any(k.startswith("module.0/") for k in want) and "gate/loop_gate" in want
    got = telemetry(torch.nn.DataParallel(model), x)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-7), k
