"""Telemetry after review: recording a ``slide="recompute"`` rollout past T does not change a
training model's outputs (the extra module calls that measure the window's last frame draw no
dropout masks from the model's random stream), and a float64 key beyond float32's range (inf
once measured in float32) is a bad key like NaN: queries that do not link it keep their sample."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import canvas_core  # noqa: E402
from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection  # noqa: E402
from canvas_core.runtime.telemetry import record_telemetry  # noqa: E402

T, V, D = 4, 8, 8
LAYOUT = CanvasLayout(T=T, H=2, W=4, d_model=D, regions={"a": (0, T, 0, 1, 0, 4), "b": (0, T, 1, 2, 0, 4)})


@pytest.mark.parametrize("fn", ["linear_attention", "pooling"])
def test_recording_a_sliding_rollout_leaves_a_dropout_models_outputs_alone(fn):
    C = Connection
    topo = CanvasTopology(connections=[C("a", "a", t_src=0, t_dst=0), C("a", "b", t_src=0, t_dst=0, fn=fn),
                                       C("b", "b", t_src=0, t_dst=-1, fn=fn)])
    torch.manual_seed(0)
    model = torch.nn.Sequential(CanvasAttention(topo, LAYOUT, n_heads=2, dropout=0.5),
                                CanvasAttention(topo, LAYOUT, n_heads=2, dropout=0.5)).train()
    frames = [torch.randn(2, V, D) for _ in range(T + 2)]

    def run(recorded):
        torch.manual_seed(123)
        with torch.no_grad(), canvas_core.incremental(model, LAYOUT, slide="recompute") as roll:
            if not recorded:
                return [roll.step(f) for f in frames]
            with record_telemetry(model):
                return [roll.step(f) for f in frames]

    for plain, recorded in zip(run(False), run(True)):
        assert torch.equal(plain, recorded)


def test_a_float64_key_past_float32s_range_is_a_bad_key():
    topo = CanvasTopology(connections=[Connection("a", "a", t_src=0, t_dst=0), Connection("b", "b", t_src=0, t_dst=0)])
    torch.manual_seed(0)
    layer = CanvasAttention(topo, LAYOUT, n_heads=2).double()
    x = torch.randn(2, LAYOUT.num_positions, D, dtype=torch.float64)

    def a_norms(y):
        return {k: v for k, v in canvas_core.telemetry(layer, y).items() if "a->a" in k and "out_norm" in k}

    clean = a_norms(x)
    for value in (float("nan"), 1e40):
        y = x.clone()
        y[1, 5] = value  # region b, frame 0, sample 1: no query of a links it
        assert a_norms(y) == pytest.approx(clean, rel=1e-12), value
