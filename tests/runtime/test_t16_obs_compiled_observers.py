"""Code compiled by ``torch.compile`` sees the update observers of a canvas layer come and go.

A layer's observer table used to be made by its first observer; code traced before then read an
absent ``__dict__`` entry, on which dynamo keeps no guard, so ``record_telemetry`` opened after
the first compiled call measured nothing (``forwards == 0``) and a user's observer was never
called, silently.  Each layer now holds its (empty) tables from its construction on.
"""

from __future__ import annotations

import pickle
from typing import Any, List

import pytest
import torch
from torch import nn

import canvas_core as cc
from canvas_core import AttentionDispatcher, CanvasLayout, CanvasTopology, Connection

LAYOUT = CanvasLayout(T=2, H=2, W=4, d_model=8, regions={"a": (0, 2, 0, 1, 0, 4), "b": (0, 2, 1, 2, 0, 4)})
TOPOLOGY = CanvasTopology(connections=[Connection("a", "b"), Connection("b", "b")])


def _model(layers: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*(AttentionDispatcher(TOPOLOGY, LAYOUT, 8, n_heads=2) for _ in range(layers))).eval()


def _x() -> torch.Tensor:
    return torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(1))


def test_a_recording_opened_after_the_first_compiled_call_measures_it():
    model, x = _model(), _x()
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad():
        compiled(x)
        with cc.record_telemetry(model) as tel:
            compiled(x)
        with cc.record_telemetry(model) as eager:
            model(x)
    assert tel.forwards == 1
    got, want = tel.values(), eager.values()
    assert got.keys() == want.keys() and len(got) > 1
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k
    assert not model[0].__dict__["_update_observers"]  # the recording took its observers back


@pytest.mark.parametrize("fullgraph", [False, True])
def test_an_observer_added_after_compiling_is_called_and_a_removed_one_is_not(fullgraph):
    """Per layer: an observer of the second layer sees the second layer only, also when both
    layers share the compiled code; with none, ``fullgraph=True`` still traces (no graph break)."""
    model, x = _model(), _x()
    compiled = torch.compile(model, backend="eager", fullgraph=fullgraph)
    calls: List[Any] = []
    with torch.no_grad():
        want = compiled(x)
        handle = model[1].observe_updates(lambda layer, h, active: calls.append((id(layer), tuple(h.shape))))
        torch.testing.assert_close(compiled(x), want)
        assert calls == [(id(model[1]), (2, 16, 8))]
        handle.remove()
        compiled(x)
        assert len(calls) == 1
        handle = model[0].observe_updates(lambda layer, h, active: calls.append((id(layer), tuple(h.shape))))
        compiled(x)
        handle.remove()
    assert calls[1:] == [(id(model[0]), (2, 16, 8))]


def test_a_layer_compiled_on_its_own_calls_a_later_observer_of_delta_too():
    layer, x = _model(1)[0], _x()
    compiled = torch.compile(layer.delta, backend="eager")
    seen: List[int] = []
    with torch.no_grad():
        compiled(x)
        with layer.observe_updates(lambda _l, h, _a: seen.append(h.shape[0])):
            compiled(x)
        compiled(x)
    assert seen == [2]


def test_a_layer_pickled_without_tables_gets_them_back():
    """A layer pickled by an older version (no tables in its ``__dict__``) has them once loaded,
    so code compiled before its first observer still sees it."""
    layer, x = _model(1)[0], _x()
    for name in ("_update_observers", "_step_observers"):
        del layer.__dict__[name]
    loaded = pickle.loads(pickle.dumps(layer))
    assert isinstance(loaded.__dict__.get("_update_observers"), dict)
    assert isinstance(loaded.__dict__.get("_step_observers"), dict)
    compiled = torch.compile(loaded, backend="eager")
    seen: List[int] = []
    with torch.no_grad():
        compiled(x)
        with loaded.observe_updates(lambda _l, h, _a: seen.append(1)):
            compiled(x)
    assert seen == [1]
