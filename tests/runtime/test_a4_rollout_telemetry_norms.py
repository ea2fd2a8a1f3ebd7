"""Telemetry of rollouts: the ``out_norm`` of types outside the softmax family is measured on the
steps' rows (so a rollout reports every number a full forward of its canvas reports), and the
probe's index work for large frames is built once per recording, laid out over the linked keys."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

import canvas_core
import canvas_core.runtime.telemetry as telemetry_module
from canvas_core import CanvasLayout, CanvasTopology, Connection
from canvas_core.runtime.rollout_plan import sampled_links
from canvas_core.runtime.telemetry import _LayerProbe, record_telemetry
from tests.runtime._rollout_models import build_model, causal_only, frames

torch.set_num_threads(1)

T, V = 4, 8
LAYOUT = CanvasLayout(T=T, H=2, W=4, d_model=8, regions={"a": (0, T, 0, 1, 0, 4), "b": (0, T, 1, 2, 0, 4)})
OTHER_TYPES = ("pooling", "linear_attention", "perceiver", "hyena", "mamba", "rwkv", "gated", "copy", "mixture")


def _topology(fn: str) -> CanvasTopology:
    C = Connection
    return CanvasTopology(connections=causal_only([
        C(src="a", dst="a", t_src=0, t_dst=0), C(src="b", dst="a", t_src=0, t_dst=-1),
        C(src="a", dst="b", t_src=0, t_dst=0, fn=fn), C(src="b", dst="b", t_src=0, t_dst=-1, fn=fn, weight=2.0),
        C(src="a", dst="a", t_src=0, t_dst=-1, fn=fn)], LAYOUT))


def _x(b: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, LAYOUT.num_positions, 8, generator=g, dtype=torch.float64)


def _rolled(model, x, mode=torch.no_grad):
    with record_telemetry(model) as tel, mode(), canvas_core.incremental(model, LAYOUT) as roll:
        for f in frames(x, V):
            roll.step(f)
    return tel.values()


def _assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k, v in want.items():  # the softmax statistics are float32 sums, the module norms float64
        assert got[k] == pytest.approx(v, rel=1e-5 if "[cross_attention]" in k else 1e-9, abs=1e-9), k


@pytest.mark.parametrize("fn", OTHER_TYPES)
def test_a_rollout_reports_the_out_norm_of_every_type(fn):
    """Before, the ``out_norm`` of a non-softmax connection came from whole-canvas forwards only:
    a rollout reported none."""
    model = build_model(_topology(fn), LAYOUT, depth=2)
    x = _x()
    with record_telemetry(model) as ref, torch.no_grad():
        model(x)
    want = ref.values()
    assert any(k.endswith(f"[{fn}]/out_norm") for k in want)
    _assert_same(_rolled(model, x), want)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_a_rollout_with_a_non_finite_sample_leaves_it_out_as_a_forward_does(mode):
    model = build_model(_topology("mamba"), LAYOUT, depth=1)
    x = _x(b=3)
    x[1, 3 * V + 2] = float("nan")  # frame 3 of sample 1
    with record_telemetry(model) as ref, torch.no_grad():
        model(x)
    got = _rolled(model, x, mode)
    assert all(np.isfinite(v) for v in got.values())
    _assert_same(got, ref.values())


def test_every_row_of_a_module_output_weighs_the_same():
    """A forward of batch 1 and one of batch 3 report what one forward of the 4 samples reports
    (the mean of per-call means weighed the single sample as much as the three)."""
    model = build_model(_topology("pooling"), LAYOUT, depth=1)
    x = _x(b=4, seed=3)
    x[0] *= 10.0
    with record_telemetry(model) as one, torch.no_grad():
        model(x)
    with record_telemetry(model) as two, torch.no_grad():
        model(x[:1])
        model(x[1:])
    key = "0.attn/#2 a->b [pooling]/out_norm"
    assert two.values()[key] == pytest.approx(one.values()[key], rel=1e-12)


# --- large frames --------------------------------------------------------------------------------
HS, TL = 48, 4  # frames of 2304 positions
BIG = CanvasLayout(T=TL, H=HS, W=HS, d_model=8, regions={"a": (0, TL, 0, HS // 2, 0, HS), "b": (0, TL, HS // 2, HS, 0, HS)})
BIG_TOPO = CanvasTopology(connections=[
    Connection(src="a", dst="a", t_src=0, t_dst=0), Connection(src="a", dst="a", t_src=0, t_dst=-1),
    Connection(src="b", dst="a", t_src=0, t_dst=0)])


def test_the_index_work_of_a_large_frame_is_built_once_per_recording(monkeypatch):
    """Each step's index tensors exceeded the per-layer budget and were rebuilt at every step of
    every episode; compact now (bias and connection index per pair), they are built once."""
    model = build_model(BIG_TOPO, BIG, depth=1).float()
    x = torch.randn(1, BIG.num_positions, 8)
    builds = []

    def counted(*args, **kwargs):
        builds.append(args[1])
        return sampled_links(*args, **kwargs)

    monkeypatch.setattr(telemetry_module, "sampled_links", counted)
    with record_telemetry(model) as ref, torch.no_grad():
        model(x)
    builds.clear()
    with record_telemetry(model) as tel, torch.no_grad(), canvas_core.incremental(model, BIG) as roll:
        for _ in range(3):
            roll.reset()
            for f in frames(x, HS * HS):
                roll.step(f)
    assert len(builds) == TL  # one per frame, for the one softmax type
    got, want = tel.values(), ref.values()
    assert set(got) == set(want)
    for k, v in want.items():  # three episodes of one canvas: its numbers
        assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k


def test_a_step_lays_out_only_the_keys_its_frame_links():
    """The probe's index work for a step of frame t spanned every key of frames 0 .. t (dense
    ``(queries, (t + 1) V)`` arrays); it spans the keys the frame's queries link (frames t and
    t - 1 here), so a late frame of a long canvas costs what an early one does."""
    long = CanvasLayout(T=128, H=2, W=4, d_model=8, regions={"a": (0, 128, 0, 1, 0, 4), "b": (0, 128, 1, 2, 0, 4)})
    topo = CanvasTopology(connections=[Connection(src="a", dst="a", t_src=0, t_dst=0),
                                       Connection(src="b", dst="a", t_src=0, t_dst=-1)])
    layer = canvas_core.CanvasAttention(topo, long, n_heads=2)
    probe = _LayerProbe("x", layer, max_queries=10_000)

    def peak(t: int) -> int:
        rows = probe._rows(t, t + 1)
        tracemalloc.start()
        try:
            links = sampled_links(layer.plan, "cross_attention", probe._rect_rows["cross_attention"],
                                  len(probe.sample), rows, (t + 1) * 8, probe.c_fn["cross_attention"][rows], 1 << 20)
            return tracemalloc.get_traced_memory()[1], links
        finally:
            tracemalloc.stop()

    early, early_links = peak(2)
    late, late_links = peak(127)
    assert late_links[1].tolist() == [126 * 8 + i for i in range(4)] + [127 * 8 + i for i in range(4)]
    assert early_links[1].tolist() == [8 + i for i in range(4)] + [16 + i for i in range(4)]
    assert late < 2 * early + 32_768, (early, late)  # was 8x: 1 MiB of dense prefix arrays


def test_a_non_finite_key_leaves_out_only_the_queries_that_link_it():
    """A NaN in region b made every sampled query of the chunk non-finite (its weight 0 times NaN
    in the probe's product), so the sample vanished from region a's numbers too, though no query
    of a reads b."""
    layout = CanvasLayout(T=2, H=2, W=4, d_model=8, regions={"a": (0, 2, 0, 1, 0, 4), "b": (0, 2, 1, 2, 0, 4)})
    topo = CanvasTopology(connections=[Connection(src="a", dst="a", t_src=0, t_dst=0),
                                       Connection(src="b", dst="b", t_src=0, t_dst=0)])
    torch.manual_seed(0)
    layer = canvas_core.CanvasAttention(topo, layout, n_heads=2)
    x = torch.randn(2, 16, 8)
    x[1, 4:8] *= 5.0  # region b of frame 0 of sample 1, then made NaN
    filled = canvas_core.telemetry(layer, x)
    x[1, 5] = float("nan")
    got = canvas_core.telemetry(layer, x)
    for k in filled:
        if "a->a" in k:
            assert got[k] == pytest.approx(filled[k], rel=1e-6), k
    assert got["CanvasAttention/#1 b->b [cross_attention]/out_norm"] != pytest.approx(
        filled["CanvasAttention/#1 b->b [cross_attention]/out_norm"], rel=1e-3)
