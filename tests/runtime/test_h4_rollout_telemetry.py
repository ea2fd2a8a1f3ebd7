"""Telemetry of rolled-out models: a rollout step measures the queries of its frame (the rollout
of a canvas reports what a full forward of that canvas reports), the full forward of
``check=`` is not measured, a slid step measures the window's last frame, and the recomputation
of activation checkpointing is not measured a second time."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import canvas_core
import canvas_core.runtime.telemetry as tel_mod
from canvas_core import CanvasLayout, CanvasTopology, Connection
from canvas_core.runtime.telemetry import record_telemetry
from tests.runtime._rollout_models import build_model, frames

torch.set_num_threads(1)

T, V = 3, 4
LAYOUT = CanvasLayout(T=T, H=2, W=2, d_model=8, regions={"a": (0, T, 0, 1, 0, 2), "b": (0, T, 1, 2, 0, 2)})
TOPO = CanvasTopology(connections=[  # causal
    Connection(src="a", dst="a", t_src=0, t_dst=0), Connection(src="a", dst="a", t_src=0, t_dst=-1),
    Connection(src="b", dst="a", t_src=0, t_dst=0), Connection(src="a", dst="b", t_src=0, t_dst=0, fn="pooling")])


def _x(seed: int = 1, b: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, LAYOUT.num_positions, 8, generator=g, dtype=torch.float64)


def _softmax_values(vals):
    return {k: v for k, v in vals.items() if "[cross_attention]" in k}


def _rolled(model, xs, **kw):
    """Telemetry of rollouts of the canvases ``xs`` (one episode each)."""
    with record_telemetry(model) as tel, torch.no_grad(), canvas_core.incremental(model, LAYOUT, **kw) as roll:
        for x in xs:
            roll.reset()
            for f in frames(x, V):
                roll.step(f)
    return tel


def test_a_rollout_reports_what_the_full_forward_reports():
    model = build_model(TOPO, LAYOUT, depth=2)
    x = _x()
    with record_telemetry(model) as ref, torch.no_grad():
        model(x)
    tel = _rolled(model, [x])
    want, got = ref.values(), tel.values()
    assert _softmax_values(want) and tel.forwards == T
    assert set(got) == set(want)  # the pooling out_norm too: its rows are measured step by step
    for k, v in got.items():
        assert v == pytest.approx(want[k], rel=1e-5, abs=1e-7), k


def test_the_check_forward_is_not_measured():
    model = build_model(TOPO, LAYOUT, depth=1)
    x = _x()
    plain, checked = _rolled(model, [x]), _rolled(model, [x], check=True)
    assert checked.forwards == plain.forwards == T
    assert checked.values() == plain.values()
    with record_telemetry(model) as tel, torch.no_grad(), canvas_core.incremental(model, LAYOUT, check=True) as roll:
        roll.step(frames(x, V)[0])
    assert tel.forwards == 1


def _totals(tel):
    return {k: (m.total, m.count) for p in tel._probes for k, m in p.stats.items()}


def test_a_slid_step_measures_the_last_frame_of_its_window():
    """Steps on frames f0 .. f3 with T = 3 (the last one slides): the canvas f0 f1 f2, then frame 2
    of the window f1 f2 f3: what a rollout of f1 f2 f3 adds beyond a rollout of f1 f2."""
    model = build_model(TOPO, LAYOUT, depth=1)
    fs = frames(_x(), V) + frames(_x(seed=2), V)[:1]
    with record_telemetry(model) as tel, torch.no_grad(), \
            canvas_core.incremental(model, LAYOUT, slide="recompute") as roll:
        for f in fs:
            roll.step(f)
    assert tel.forwards == 4
    first = _totals(_rolled(model, [torch.cat(fs[:3], 1)]))
    window = _totals(_rolled(model, [torch.cat(fs[1:], 1)]))
    with record_telemetry(model) as part, torch.no_grad(), canvas_core.incremental(model, LAYOUT) as roll:
        roll.step(fs[1])
        roll.step(fs[2])
    head = _totals(part)
    got = _totals(tel)
    assert set(got) == set(first)
    for k, (total, count) in got.items():
        h_total, h_count = head.get(k, (0.0, 0))
        assert count == first[k][1] + window[k][1] - h_count, k
        assert total == pytest.approx(first[k][0] + window[k][0] - h_total, rel=1e-5, abs=1e-7), k


def test_queries_weigh_the_same_however_the_chunks_fall(monkeypatch):
    """The softmax probe runs its sampled queries in chunks; a chunk's mean must not weigh as much
    as another chunk with more queries of the connection."""
    model = build_model(TOPO, LAYOUT, depth=1)
    x = _x()
    with record_telemetry(model) as ref, torch.no_grad():
        model(x)
    # 3 query rows per chunk: (B * H * N) = 2 * 2 * 12 elements per row
    monkeypatch.setattr(tel_mod, "_CHUNK_ELEMENTS", 3 * 2 * 2 * LAYOUT.num_positions)
    with record_telemetry(model) as tel, torch.no_grad():
        model(x)
    want, got = ref.values(), tel.values()
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k


@pytest.mark.parametrize("reentrant", [False, True])
def test_a_checkpointed_forward_is_measured_once(reentrant):
    model = build_model(TOPO, LAYOUT, depth=2)
    x = _x()
    with record_telemetry(model) as ref:
        model(x).sum().backward()
    with record_telemetry(model) as tel:
        checkpoint(model, x.clone().requires_grad_(True), use_reentrant=reentrant).sum().backward()
    assert tel.forwards == ref.forwards == 1
    assert [p.forwards for p in tel._probes] == [1, 1]
    want, got = ref.values(), tel.values()
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-6), k


def test_checkpointed_blocks_are_measured_once():
    base = build_model(TOPO, LAYOUT, depth=2)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = base

        def forward(self, x):
            for block in self.net[:-1]:
                x = checkpoint(block, x, use_reentrant=False)
            return self.net[-1](x)

    net = Net()
    with record_telemetry(net) as tel:
        net(_x().requires_grad_(True)).sum().backward()
    assert tel.forwards == 1
    assert [p.forwards for p in tel._probes] == [1, 1]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_sample_is_left_out_and_poisons_nothing(bad):
    """A sample that is all NaN (or inf) adds nothing; the other samples give what they give alone,
    in a plain forward and in a rollout (where the running means go on over later forwards)."""
    model = build_model(TOPO, LAYOUT, depth=1)
    good = _x(b=1)
    both = torch.cat([good, torch.full_like(good, bad)])
    with record_telemetry(model) as ref, torch.no_grad():
        model(good)
    with record_telemetry(model) as tel, torch.no_grad():
        model(both)
    want, got = ref.values(), tel.values()
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-6), k
    rolled = _rolled(model, [both]).values()
    for k, v in rolled.items():
        assert v == pytest.approx(want[k], rel=1e-5), k


@pytest.mark.parametrize("top", [-1, "3", 2.5, True, None])
def test_summary_refuses_a_bad_top(top):
    from canvas_core.errors import CanvasTypeError

    model = build_model(TOPO, LAYOUT, depth=1)
    with record_telemetry(model) as tel, torch.no_grad():
        model(_x())
    with pytest.raises(CanvasTypeError, match=r"summary\(top="):
        tel.summary(top)
    assert len(tel.summary(2).splitlines()) == 3  # header and two connections (no gate)


def test_a_batch_that_is_all_nan_reports_no_share_of_zero():
    model = build_model(TOPO, LAYOUT, depth=1)
    with record_telemetry(model) as tel, torch.no_grad():
        model(torch.full_like(_x(), float("nan")))
    vals = tel.values()
    assert not [k for k in vals if "[cross_attention]" in k]
