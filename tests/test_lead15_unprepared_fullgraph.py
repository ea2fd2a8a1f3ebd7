"""An ``active_regions`` set that was not prepared, under ``torch.compile(fullgraph=True)``: torch
refuses the graph break, and its message must tell the user what to do (``layer.prepare``)."""

import inspect

import pytest
import torch

from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection


def _layer() -> CanvasAttention:
    lay = CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})
    top = CanvasTopology(connections=[Connection("b", "a", fn="pooling"), Connection("a", "a")])
    torch.manual_seed(0)
    return CanvasAttention(top, lay, d_model=8, n_heads=2)


@pytest.mark.skipif("reason" not in inspect.signature(torch.compiler.disable).parameters,
                    reason="torch < 2.8: torch.compiler.disable takes no reason to show")
def test_unprepared_set_under_fullgraph_names_the_fix():
    layer = _layer()
    with pytest.raises(Exception) as info:
        torch.compile(layer, backend="aot_eager", fullgraph=True)(torch.randn(2, 8, 8), active_regions={"b"})
    assert "layer.prepare" in str(info.value)


def test_prepared_set_under_fullgraph_runs_and_equals_eager():
    layer = _layer().prepare({"b"})
    x = torch.randn(2, 8, 8)
    got = torch.compile(layer, backend="aot_eager", fullgraph=True)(x, active_regions={"b"})
    torch.testing.assert_close(got, layer(x, active_regions={"b"}))


def test_compile_disabled_works_without_reason_support(monkeypatch):
    """On torch < 2.8 ``torch.compiler.disable`` has no ``reason``: the decorator still disables."""
    from canvas_core.runtime import func_transforms

    calls = []

    def old_disable(fn=None, recursive=True):  # torch 2.4-2.7's signature
        calls.append(fn)
        return (lambda f: f) if fn is None else fn

    monkeypatch.setattr(torch.compiler, "disable", old_disable)
    def f():
        return 1

    assert func_transforms.compile_disabled("why")(f) is f and calls == [f]
