"""Telemetry of a rollout step costs what the step's frame needs: ``qkv`` runs on the new frame only
(the keys and values of earlier frames are kept for the episode), and the probe's attention spans
the keys the frame's queries link, not the whole prefix; the numbers stay those of a full forward."""

from __future__ import annotations

import pytest
import torch

import canvas_core
from canvas_core import CanvasLayout, CanvasTopology, Connection
from canvas_core.runtime.telemetry import record_telemetry
from tests.runtime._rollout_models import build_model, frames

torch.set_num_threads(1)

T, V = 6, 4
LAYOUT = CanvasLayout(T=T, H=2, W=2, d_model=8, regions={"a": (0, T, 0, 1, 0, 2), "b": (0, T, 1, 2, 0, 2)})
TOPO = CanvasTopology(connections=[  # causal; the softmax queries read region a at frames t and t - 1
    Connection(src="a", dst="a", t_src=0, t_dst=0), Connection(src="a", dst="a", t_src=0, t_dst=-1),
    Connection(src="b", dst="a", t_src=0, t_dst=0), Connection(src="a", dst="b", t_src=0, t_dst=0, fn="pooling")])


def _x(seed: int = 1, b: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, LAYOUT.num_positions, 8, generator=g, dtype=torch.float64)


def _totals(tel) -> dict:
    return {k: (m.total, m.count) for p in tel._probes for k, m in p.stats.items()}


def _assert_close(got: dict, want: dict) -> None:
    assert got and set(got) == set(want)
    for k, (total, count) in got.items():
        assert count == want[k][1], k
        assert total == pytest.approx(want[k][0], rel=1e-6, abs=1e-9), k


def _qkv_rows(model, telemetry: bool) -> int:
    """Rows of layer inputs that went through the canvas layers' ``qkv`` in one rollout."""
    rows = [0]
    handles = [block.attn.qkv.register_forward_hook(lambda _m, i, _o: rows.__setitem__(0, rows[0] + i[0].shape[1]))
               for block in model[:-1]]
    try:
        with (record_telemetry(model) if telemetry else torch.no_grad()), torch.no_grad(), \
                canvas_core.incremental(model, LAYOUT) as roll:
            for f in frames(_x(), V):
                roll.step(f)
    finally:
        for h in handles:
            h.remove()
    return rows[0]


def test_a_step_runs_qkv_on_its_frame_only():
    """Without the cache every step ran qkv over frames 0 .. t: quadratic in T."""
    model = build_model(TOPO, LAYOUT, depth=2)
    plain = _qkv_rows(model, telemetry=False)
    assert plain == 2 * T * V  # the rollout itself: each frame once per layer
    assert _qkv_rows(model, telemetry=True) == 2 * plain


def test_a_step_attends_over_the_keys_its_frame_links(monkeypatch):
    """The probe's logits of step t span the keys of region a at frames t and t - 1 (2 at t = 0,
    then 4), not the (t + 1) V keys of the prefix; the totals are a full forward's."""
    model = build_model(TOPO, LAYOUT, depth=1)
    x = _x()
    widths = []
    einsum = torch.einsum

    def spy(eq, *ops):
        if eq == "bhsd,bhnd->bhsn":
            widths.append(ops[1].shape[2])
        return einsum(eq, *ops)

    with record_telemetry(model) as ref, torch.no_grad():
        model(x)
    monkeypatch.setattr(torch, "einsum", spy)
    with record_telemetry(model) as tel, torch.no_grad(), canvas_core.incremental(model, LAYOUT) as roll:
        for f in frames(x, V):
            roll.step(f)
    monkeypatch.undo()
    assert widths == [2] + [4] * (T - 1)
    want = {k: v for k, v in _totals(ref).items() if "[cross_attention]" in k}
    _assert_close(_totals(tel), want)


def test_a_layer_called_twice_per_step_resets_and_new_batches_keep_their_own_keys():
    """A block run twice per step (two input buffers per layer), an episode abandoned after two
    steps on a batch of 3, then two episodes of 2: each step uses the keys of its own call and
    episode (the totals of the episodes recorded one by one, and of full forwards)."""
    block = build_model(TOPO, LAYOUT, depth=1)[0]
    model = torch.nn.Sequential(block, block, torch.nn.Linear(8, 3).double())
    x1, x2, x3 = _x(1), _x(2), _x(3, b=3)
    f1, f2, f3 = frames(x1, V), frames(x2, V), frames(x3, V)

    def alone(*episodes):
        with record_telemetry(model) as tel, torch.no_grad():
            for fs in episodes:
                with canvas_core.incremental(model, LAYOUT) as roll:
                    for f in fs:
                        roll.step(f)
        return _totals(tel)

    with record_telemetry(model) as tel, torch.no_grad(), canvas_core.incremental(model, LAYOUT) as roll:
        for fs in (f3[:2], f1, f2):
            roll.reset()
            for f in fs:
                roll.step(f)
        probes = list(tel._probes)
    _assert_close(_totals(tel), alone(f3[:2], f1, f2))
    assert not probes[0]._preps and not probes[0]._pending  # nothing of the episodes is held after the recording
    with record_telemetry(model) as ref, torch.no_grad():
        model(x1)
        model(x2)
    _assert_close(alone(f1, f2), {k: v for k, v in _totals(ref).items() if "[cross_attention]" in k})


def test_a_recording_started_mid_episode_measures_the_steps_it_sees():
    model = build_model(TOPO, LAYOUT, depth=2)
    fs = frames(_x(), V)
    with torch.no_grad(), canvas_core.incremental(model, LAYOUT) as roll:
        with record_telemetry(model) as head:
            for f in fs[:3]:
                roll.step(f)
        with record_telemetry(model) as tail:  # no keys of frames 0 .. 2 from this recording
            for f in fs[3:]:
                roll.step(f)
        roll.reset()
        with record_telemetry(model) as whole:
            for f in fs:
                roll.step(f)
    h, t = _totals(head), _totals(tail)
    both = {k: (h.get(k, (0.0, 0))[0] + t.get(k, (0.0, 0))[0], h.get(k, (0.0, 0))[1] + t.get(k, (0.0, 0))[1])
            for k in set(h) | set(t)}
    _assert_close(both, _totals(whole))


@pytest.mark.parametrize("max_queries", [4, 5])
@pytest.mark.parametrize("first", [1, 2, 4])
def test_few_sampled_frames_and_an_episode_cut_short(max_queries, first):
    """With fewer sampled queries than frames most steps measure nothing; the keys of the frames in
    between are caught up at the next measured step, and an episode cut short after ``first``
    steps (then reset, same batch, so the same buffers) leaves none of its keys to the next one."""
    model = build_model(TOPO, LAYOUT, depth=2)
    x0, x1 = _x(3), _x(1)
    with record_telemetry(model, max_queries=max_queries) as tel, torch.no_grad(), \
            canvas_core.incremental(model, LAYOUT) as roll:
        for fs in (frames(x0, V)[:first], frames(x1, V)):
            roll.reset()
            for f in fs:
                roll.step(f)
    with record_telemetry(model, max_queries=max_queries) as cut, torch.no_grad(), \
            canvas_core.incremental(model, LAYOUT) as roll:
        for f in frames(x0, V)[:first]:
            roll.step(f)
    with record_telemetry(model, max_queries=max_queries) as ref, torch.no_grad():
        model(x1)
    c, r = _totals(cut), {k: v for k, v in _totals(ref).items() if "[cross_attention]" in k}
    want = {k: (c.get(k, (0.0, 0))[0] + r.get(k, (0.0, 0))[0], c.get(k, (0.0, 0))[1] + r.get(k, (0.0, 0))[1])
            for k in set(c) | set(r)}
    _assert_close(_totals(tel), want)
