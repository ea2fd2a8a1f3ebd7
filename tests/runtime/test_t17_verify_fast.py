"""verify_structure on large canvases and on plugins that fail under the probe.

* the core's reference kernel is probed in its ``segments`` mode where that does less work than
  the mode the layer built (``lean_kernels``): the report is the same as probing the layer as
  built (``as_built=True``), on random small topologies with the lean mode forced;
* a kernel returning NaN is named as such (``AttentionContractError``), not reported as a read of
  every position;
* a type whose module raises while probed is one ``PluginError`` naming the type and its
  connection.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import canvas_core.plugins as P
import canvas_core.runtime.verify_guard as guard
from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection, verify_structure
from canvas_core.compiler.lowering import lower
from canvas_core.compiler.resolution import resolve_plan
from canvas_core.errors import AttentionContractError, CanvasTypeError, PluginError
from canvas_core.extend import AttentionKernel
from canvas_core.plugins import PluginHost, use_host

torch.set_num_threads(1)

NAMES = ("a", "b", "c")


def _layout(T: int, widths) -> CanvasLayout:
    regions, x = {}, 0
    for name, w in zip(NAMES, widths):
        regions[name] = (0, T, x, x + w)
        x += w
    return CanvasLayout(T=T, spatial_shape=(x,), d_model=8, regions=regions)


@st.composite
def _topologies(draw):
    T = draw(st.integers(1, 3))
    widths = draw(st.lists(st.integers(1, 4), min_size=3, max_size=3))
    pairs = st.tuples(st.sampled_from(NAMES), st.sampled_from(NAMES), st.sampled_from((0, -1)),
                      st.sampled_from(("cross_attention", "self_attention", "pooling")))
    conns = draw(st.lists(pairs, min_size=1, max_size=6, unique_by=lambda p: p[:3]))
    topo = CanvasTopology(connections=[Connection(s, d, t_src=0, t_dst=dt, fn=f) for s, d, dt, f in conns])
    return _layout(T, widths), topo, draw(st.sampled_from(("dense", "sparse"))), draw(st.integers(0, 3))


@pytest.mark.filterwarnings("ignore:connection .* links nothing")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(_topologies())
def test_the_lean_kernel_gives_the_report_of_the_kernel_as_built(monkeypatch, case):
    layout, topo, mode, seed = case
    monkeypatch.setattr(guard, "LEAN_FROM", 0)  # small canvases swap too
    torch.manual_seed(seed)
    layer = CanvasAttention(topo, layout, d_model=8, n_heads=2, kernel="reference", kernel_options={"mode": mode})
    for stack in (layer, nn.Sequential(layer, CanvasAttention(topo, layout, d_model=8, n_heads=2))):
        kw = dict(max_exact=12, samples=6, seed=seed)  # small canvases exact, larger ones sampled
        built = verify_structure(stack, as_built=True, **kw).to_dict()
        assert verify_structure(stack, **kw).to_dict() == built


def test_the_reference_kernel_runs_lean_while_probed_and_as_built_after(monkeypatch):
    monkeypatch.setattr(guard, "LEAN_FROM", 0)
    layout = _layout(2, (3, 3, 2))
    topo = CanvasTopology(connections=[Connection("a", "b"), Connection("b", "c", t_dst=-1), Connection("c", "a")])
    layer = CanvasAttention(topo, layout, d_model=8, n_heads=2, kernel="reference", kernel_options={"mode": "dense"})
    before = layer.executor.kernels["k0"]
    seen = []
    with guard.lean_kernels(layer):
        seen.append(layer.executor.kernels["k0"].mode)
    assert seen == ["segments"] and layer.executor.kernels["k0"] is before
    with guard.lean_kernels(layer, as_built=True):
        assert layer.executor.kernels["k0"] is before
    monkeypatch.setattr(guard, "LEAN_FROM", 10 ** 9)  # a small canvas is probed as built
    with guard.lean_kernels(layer):
        assert layer.executor.kernels["k0"] is before
    with pytest.raises(CanvasTypeError, match="as_built must be True or False"):
        verify_structure(layer, as_built="yes")


# --- failing plugins ------------------------------------------------------------------------------
class _NaNs(AttentionKernel):
    def forward(self, q, k, v, *, scale=None, dropout_p=0.0):
        return v * float("nan")


class _RaisesLater(nn.Module):
    """A sound type (mean of its keys) for the build's probes, raising on every later call."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.lin = nn.Linear(d_model, d_model)

    def forward(self, q, k, v):
        if getattr(self, "armed", False):
            raise ValueError("plugin blew up")
        return self.lin(v.mean(1, keepdim=True).expand(-1, q.shape[1], -1))


@pytest.fixture
def host():
    with use_host(PluginHost(entry_points=lambda: [])):
        yield


def _two_regions():
    return _layout(2, (2, 2, 1))


def test_a_kernel_returning_nan_is_named_not_read_as_every_position(host):
    P.register_kernel("t17_nan_k", _NaNs, supports=("cross_attention",))
    topo = CanvasTopology(connections=[Connection("a", "b"), Connection("b", "a", t_dst=-1)])
    plan = resolve_plan(lower(topo, _two_regions()), device="cpu", kernel="t17_nan_k")
    layer = CanvasAttention(plan, d_model=8, n_heads=2)  # the plan's choice (as the compiler's auto pick)
    assert "t17_nan_k" in layer.executor.describe_kernels()["cross_attention"]
    with pytest.raises(AttentionContractError) as info:
        verify_structure(layer)
    msg = str(info.value)
    assert "NaN or infinite values" in msg and "fn 'cross_attention'" in msg and "t17_nan_k" in msg, msg


def test_a_type_raising_while_probed_is_one_plugin_error_naming_it(host):
    P.register_attention("t17_raises_later", _RaisesLater)
    topo = CanvasTopology(connections=[Connection("a", "b"), Connection("c", "a", fn="t17_raises_later")])
    layer = CanvasAttention(topo, _two_regions(), d_model=8, n_heads=2)
    layer.fn_modules["t17_raises_later"].armed = True
    with pytest.raises(PluginError) as info:
        verify_structure(layer)
    msg = str(info.value)
    assert "fn type 't17_raises_later'" in msg and "'c' -> 'a'" in msg and "ValueError" in msg, msg
    assert "plugin blew up" in msg and isinstance(info.value.__cause__, ValueError)
    # the same in a model probed whole
    with pytest.raises(PluginError, match="fn type 't17_raises_later'.*while model was probed"):
        verify_structure(nn.Sequential(layer))
