"""Compiled code is guarded on a canvas layer's observers themselves, not on their handles' ids.

The observer tables were keyed by the global id of each ``RemovableHandle``, and traced code read
the table, so dynamo guarded on the id: every add/remove cycle of the same observer recompiled,
and the eighth raised ``FailOnRecompileLimitHit`` under ``fullgraph=True``.  Telemetry's observer
was traced too: under ``fullgraph=True`` a recording failed with a raw dynamo error (also inside
``incremental(compiled, check=True)``), and without it each recording recompiled.  A copy of a
layer shared its tables with the original.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, List

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import canvas_core as cc
from canvas_core import AttentionDispatcher, CanvasLayout, CanvasTopology, Connection

LAYOUT = CanvasLayout(T=2, H=2, W=4, d_model=8, regions={"a": (0, 2, 0, 1, 0, 4), "b": (0, 2, 1, 2, 0, 4)})
TOPOLOGY = CanvasTopology(connections=[Connection("a", "b"), Connection("b", "b")])
CAUSAL = CanvasTopology(connections=[Connection("a", "b", t_src=0, t_dst=0), Connection("b", "b", t_src=0, t_dst=0),
                                     Connection("b", "b", t_src=0, t_dst=-1)])


def _model(layers: int = 2, topology: CanvasTopology = TOPOLOGY) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*(AttentionDispatcher(topology, LAYOUT, 8, n_heads=2) for _ in range(layers))).eval()


def _x() -> torch.Tensor:
    return torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(1))


def _counting() -> "tuple[Callable[..., Any], List[int]]":
    """A dynamo backend that runs graphs eagerly and counts how many it was given."""
    graphs: List[int] = []

    def backend(gm: Any, _inputs: Any) -> Any:
        graphs.append(1)
        return gm
    return backend, graphs


def test_adding_and_removing_the_same_observer_again_and_again_reuses_the_compiled_graph():
    torch._dynamo.reset()
    model, x = _model(1), _x()
    backend, graphs = _counting()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    calls = torch.zeros(())

    def observer(_layer: nn.Module, _h: torch.Tensor, _active: Any) -> None:
        calls.add_(1)  # (a Python list appended to would be guarded on its length)
    with torch.no_grad():
        compiled(x)
        for _ in range(12):  # more than dynamo's recompile limit (8)
            with model[0].observe_updates(observer):
                compiled(x)
        compiled(x)
    assert int(calls) == 12
    assert len(graphs) == 2  # one without the observer, one with it


def test_a_stale_handle_does_not_remove_the_observer_added_again():
    layer, x = _model(1)[0], _x()
    calls: List[int] = []

    def observer(_layer: nn.Module, _h: torch.Tensor, _active: Any) -> None:
        calls.append(1)
    first = layer.observe_updates(observer)
    first.remove()
    second = layer.observe_updates(observer)
    first.remove()  # removes nothing: its entry is gone already
    with torch.no_grad():
        layer(x)
    second.remove()
    second.remove()
    with torch.no_grad():
        layer(x)
    assert calls == [1]


@pytest.mark.parametrize("deep", [False, True])
def test_a_copy_of_a_layer_has_observers_of_its_own(deep):
    layer, x = _model(1)[0], _x()
    seen: List[str] = []
    kept = layer.observe_updates(lambda _l, _h, _a: seen.append("original's"))
    twin = copy.deepcopy(layer) if deep else copy.copy(layer)
    twin.observe_updates(lambda _l, _h, _a: seen.append("copy's"))
    with torch.no_grad():
        layer(x)
        assert seen == ["original's"]
        twin(x)
    assert seen == ["original's", "copy's"]
    kept.remove()


def test_recordings_of_a_compiled_model_after_the_first_compile_nothing_new():
    torch._dynamo.reset()
    model, x = _model(), _x()
    backend, graphs = _counting()
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        compiled(x)
        with cc.record_telemetry(model) as first:
            compiled(x)
        after_first = len(graphs), counters["frames"]["total"]  # graphs, and frames dynamo compiled
        for _ in range(3):
            with cc.record_telemetry(model) as tel:
                compiled(x)
        with cc.record_telemetry(model) as eager:
            model(x)
    assert (len(graphs), counters["frames"]["total"]) == after_first
    assert first.forwards == tel.forwards == 1
    got, want = tel.values(), eager.values()
    assert got.keys() == want.keys() and len(got) > 1
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k
    assert not model[0].__dict__["_update_observers"] and not model[0].__dict__["_step_observers"]


def test_recording_a_fullgraph_compiled_model_is_refused_with_a_canvas_error():
    torch._dynamo.reset()
    model, x = _model(), _x()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        want = compiled(x)
        with pytest.raises(cc.CanvasError, match="without fullgraph=True while recording"):
            with cc.record_telemetry(model):
                compiled(x)
        torch.testing.assert_close(compiled(x), want)  # nothing left attached
    assert not model[0].__dict__["_update_observers"]


def test_a_checked_rollout_of_a_fullgraph_compiled_model_records():
    torch._dynamo.reset()
    model, x = _model(topology=CAUSAL), _x()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        full = compiled(x)
        with cc.record_telemetry(model) as tel:
            with cc.incremental(compiled, LAYOUT, check=True) as roll:
                ys = [roll.step(x[:, t * 8:(t + 1) * 8]) for t in range(2)]
        with cc.record_telemetry(model) as eager:
            with cc.incremental(model, LAYOUT) as roll:
                for t in range(2):
                    roll.step(x[:, t * 8:(t + 1) * 8])
    torch.testing.assert_close(torch.cat(ys, 1), full)
    assert tel.forwards == 2 and tel.values() == pytest.approx(eager.values())
