"""The attention-type contract end to end (docs/plugins.md, "The attention-type contract"):
a plugin distribution written for canvas-engineering's protocol -- ``forward(queries, keys,
values)``, no ``key_mask`` -- installed (a real ``.dist-info`` with an entry point on
``sys.path``, what pip writes) passes ``check_attention_type`` and runs in a topology, exactly
(once per set of queries sharing their keys) and as canvas-engineering runs it; a type the
runtime cannot call is refused by the kit and by the layer with the same reason."""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid

import pytest

torch = pytest.importorskip("torch")

from canvas_core.errors import AttentionContractError  # noqa: E402
from canvas_core.plugins import PluginHost, use_host  # noqa: E402

IMPL = '''
import torch
from torch import nn


class CEStyleAttention(nn.Module):
    """Softmax attention over exactly the keys it is given (canvas-engineering's protocol)."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)

    def forward(self, queries, keys, values):
        w = torch.softmax(self.q(queries) @ self.k(keys).transpose(1, 2) / keys.shape[-1] ** 0.5, -1)
        return self.o(w @ values)


class OneArgument(nn.Module):
    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.p = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.p(x)
'''

PLUGIN = '''
from canvas_core import hookimpl


@hookimpl
def canvas_register_attention(registry):
    registry.add("{good}", "{impl}:CEStyleAttention", family="Test", description="ce-style type")
    registry.add("{bad}", "{impl}:OneArgument", family="Test", description="uncallable type")
'''


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A distribution 'canvas-plugin-cestyle-<id>' installed into a directory on sys.path."""
    tag = uuid.uuid4().hex[:8]
    impl, plug = f"cestyle_impl_{tag}", f"cestyle_plugin_{tag}"
    good, bad = f"cestyle_{tag}", f"onearg_{tag}"
    (tmp_path / f"{impl}.py").write_text(textwrap.dedent(IMPL))
    (tmp_path / f"{plug}.py").write_text(textwrap.dedent(PLUGIN.format(good=good, bad=bad, impl=impl)))
    dist = f"canvas-plugin-cestyle-{tag}"
    info = tmp_path / f"canvas_plugin_cestyle_{tag}-0.3.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3.0\n")
    (info / "entry_points.txt").write_text(f"[canvas]\ncestyle_{tag} = {plug}\n")
    (info / "RECORD").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with use_host(PluginHost()):
        yield dist, good, bad, importlib.import_module(impl)
    for m in (impl, plug):
        sys.modules.pop(m, None)
    importlib.invalidate_caches()


def _layout_and_topology(fn):
    from canvas_core.schema import CanvasLayout, CanvasTopology, Connection

    layout = CanvasLayout(T=2, H=3, W=2, d_model=16, regions={
        "a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2), "c": (0, 2, 2, 3, 0, 1)})
    topo = CanvasTopology(connections=[Connection("a", "b", fn=fn), Connection("b", "c", fn=fn),
                                       Connection("c", "a", fn=fn), Connection("c", "c", fn=fn)])
    return layout, topo


def test_ce_protocol_type_passes_the_kit(installed):
    from canvas_core.testing import check_attention_type

    _, good, _, _ = installed
    report = check_attention_type(good, strict=True)
    assert report.ok, report.summary()
    assert report.details["calling convention"] == "per_key_set"
    assert {"fully masked query", "zeros without keys", "key_mask respected"} <= set(report.passed)


def test_ce_protocol_type_runs_exactly_in_a_topology(installed):
    from canvas_core.dispatch import AttentionDispatcher

    _, good, _, _ = installed
    layout, topo = _layout_and_topology(good)
    layer = AttentionDispatcher(topo, layout, d_model=16, n_heads=2)
    module = next(iter(layer.fn_modules.values()))
    x = torch.randn(2, layout.num_positions, 16)
    out = layer(x)
    # reference: every query alone, with exactly the keys the topology gives it
    allowed = topo.to_attention_mask(layout) > 0
    want = x.clone()
    for p in range(layout.num_positions):
        keys = torch.nonzero(allowed[p]).flatten()
        if keys.numel():
            want[:, p] = module(x[:, p:p + 1], x[:, keys], x[:, keys])[:, 0]
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


def test_ce_protocol_type_matches_canvas_engineering_dispatcher(installed):
    ce = pytest.importorskip("canvas_engineering")
    from canvas_core.dispatch import AttentionDispatcher

    _, good, _, impl = installed
    ce.register_attention(good, impl.CEStyleAttention)
    layout, topo = _layout_and_topology(good)
    ours = AttentionDispatcher(topo, layout, d_model=16, n_heads=2)
    c = ce.CanvasLayout(T=2, H=3, W=2, d_model=16, regions={n: tuple(layout.regions[n].bounds) for n in layout.regions})
    theirs = ce.dispatch.AttentionDispatcher(
        ce.CanvasTopology(connections=[ce.Connection(x.src, x.dst, fn=x.fn) for x in topo.connections]), c,
        d_model=16, n_heads=2)
    next(iter(ours.fn_modules.values())).load_state_dict(theirs.fn_modules[good].state_dict())
    # one connection per source region except c (two): compare where canvas-engineering's
    # per-connection average and our union coincide (queries of a and b), and everywhere else
    # the passthrough
    x = torch.randn(2, layout.num_positions, 16)
    a_b = torch.tensor(layout.region_indices("a") + layout.region_indices("b"))
    torch.testing.assert_close(ours(x)[:, a_b], theirs(x)[:, a_b], rtol=1e-5, atol=1e-6)


def test_uncallable_type_refused_by_kit_and_layer_with_the_same_reason(installed):
    from canvas_core.dispatch import AttentionDispatcher
    from canvas_core.testing import check_attention_type

    dist, _, bad, _ = installed
    report = check_attention_type(bad, raise_on_failure=False)
    assert list(report.failed) == ["construct"]
    layout, topo = _layout_and_topology(bad)
    with pytest.raises(AttentionContractError) as info:
        AttentionDispatcher(topo, layout, d_model=16, n_heads=2)
    msg = str(info.value)
    assert bad in msg and dist in msg and "forward(queries, keys, values" in msg
    assert msg in report.failed["construct"]
