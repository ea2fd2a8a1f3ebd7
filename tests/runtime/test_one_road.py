"""One road from a connection's ``fn`` to the kernel call.

A connection's type is read once (lowering), each fn type is looked up in the registry once (the
resolution pass, when the plan is built), and the layers that execute the plan build their kernel
and modules from what the plan carries: neither building them nor running them asks the registry
for a name again.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import canvas_core.plugins as P
from canvas_core.compiler import ProgramCompiler
from canvas_core.compiler.resolved import ResolvedGroup
from canvas_core.plugins.host import PluginHost, use_host
from canvas_core.plugins.registry import Registry, RegistryState
from canvas_core.runtime.canvas_attention import CanvasAttention
from canvas_core.runtime.dispatch import AttentionDispatcher
from canvas_core.runtime.kernels import ReferenceKernel, kernel_for
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection


class TracingKernel(ReferenceKernel):
    """The reference math; remembers the group it was built for and counts its calls."""

    calls = 0

    def __init__(self, group, plan, **kw):
        super().__init__(group, plan, **kw)
        self.group = group

    def forward(self, q, k, v, *, scale, dropout_p=0.0):
        type(self).calls += 1
        return super().forward(q, k, v, scale=scale, dropout_p=dropout_p)


LAYOUT = dict(T=2, H=2, W=4, d_model=16, regions={"a": (0, 2, 0, 2, 0, 2), "b": (0, 2, 0, 2, 2, 4)})
CONNS = [Connection("a", "b"), Connection("b", "a"), Connection("a", "a", fn="linear_attention"),
         Connection("b", "b", fn="pooling"), Connection("b", "b", t_src=0, t_dst=-1)]
TYPES = {"cross_attention", "linear_attention", "pooling"}


@pytest.fixture
def spies(monkeypatch):
    """Counts of registry lookups by (kind, name), registry listings by kind, and fn reads."""
    gets, listings, reads = Counter(), Counter(), Counter()
    real_get, real_specs, real_resolve_fn = Registry.get, RegistryState.specs, CanvasTopology.resolve_fn

    def get(self, name, *args, **kw):
        gets[(self.kind, name)] += 1
        return real_get(self, name, *args, **kw)

    def specs(self):
        listings[self.kind] += 1
        return real_specs(self)

    def resolve_fn(self, connection, layout=None):
        reads[(connection.src, connection.dst, connection.fn)] += 1
        return real_resolve_fn(self, connection, layout)

    monkeypatch.setattr(Registry, "get", get)
    monkeypatch.setattr(RegistryState, "specs", specs)  # Registry.specs and snapshot().specs both end here
    monkeypatch.setattr(CanvasTopology, "resolve_fn", resolve_fn)
    with use_host(PluginHost(entry_points=lambda: [])):
        P.register_kernel("tracing", TracingKernel, supports=("cross_attention",), priority=50)
        gets.clear(), listings.clear(), reads.clear()
        yield gets, listings, reads


def _schema():
    return CanvasSchema(layout=CanvasLayout(**LAYOUT), topology=CanvasTopology(connections=list(CONNS)))


def test_compile_reads_each_fn_once_and_looks_each_type_up_once(spies):
    gets, listings, reads = spies
    compiled = ProgramCompiler(_schema()).compile(device="cpu")
    # lowering read every connection's type exactly once
    assert sorted(reads.values()) == [1] * len(CONNS)
    # the resolution pass asked the attention registry once per fn type, nothing more
    attention = {name: n for (kind, name), n in gets.items() if kind == "attention"}
    assert attention == {t: 1 for t in TYPES}
    assert listings["kernels"] == len(TYPES)  # one candidate listing per type
    plan = compiled.plan
    for fn in TYPES:
        rg = plan.groups[fn].resolved
        assert isinstance(rg, ResolvedGroup) and rg.fn == fn and rg.attention.name == fn
    assert plan.groups["cross_attention"].resolved.kernel.name == "tracing"
    assert plan.groups["linear_attention"].resolved.kernel is None
    # the report rows are the groups' decisions seen per connection
    for i, fn in enumerate(plan.fn_of_connection):
        assert compiled.resolutions[i].requested == fn
        assert compiled.resolutions[i].kernel == plan.groups[fn].resolved.kernel_name


def test_layer_builds_from_the_plan_and_never_looks_a_name_up(spies):
    gets, listings, reads = spies
    compiled = ProgramCompiler(_schema()).compile(device="cpu")
    plan = compiled.plan
    gets.clear(), listings.clear(), reads.clear()

    layer = CanvasAttention(plan, d_model=16, n_heads=2)
    (kern,) = layer.executor.kernels.values()
    # the kernel of the softmax group is the resolved entry, built for that very group
    assert isinstance(kern, TracingKernel) and kern.group is plan.groups["cross_attention"]
    # the other types' modules come from the resolved attention entries
    for fn in ("linear_attention", "pooling"):
        assert type(layer.fn_modules[fn]) is plan.groups[fn].resolved.attention.load()

    before = TracingKernel.calls
    x = torch.randn(2, plan.n, 16)
    y = layer(x)
    layer(x, active_regions={"b"})  # a restricted plan, built on first use
    layer(x, active_regions={"b"})
    assert TracingKernel.calls == before + 3 and torch.isfinite(y).all()
    # nothing between the plan and the kernel call asked the registry or re-read a type
    assert not gets and not listings and not reads


def test_kernel_for_gives_a_backbone_the_planned_kernel(spies):
    gets, listings, _ = spies
    plan = ProgramCompiler(_schema()).compile(device="cpu").plan
    gets.clear(), listings.clear()
    kern = kernel_for(plan, "cross_attention", n_heads=2, head_dim=8)
    assert isinstance(kern, TracingKernel) and kern.group is plan.groups["cross_attention"]
    q = torch.randn(1, 2, plan.n, 8)
    ref = ReferenceKernel(plan.groups["cross_attention"], plan)
    torch.testing.assert_close(kern(q, q, q, scale=0.3), ref(q, q, q, scale=0.3))
    assert not gets and not listings


def test_dispatcher_resolves_once_at_construction_and_never_in_forward(spies):
    gets, listings, reads = spies
    layout, topology = CanvasLayout(**LAYOUT), CanvasTopology(connections=list(CONNS))
    layer = AttentionDispatcher(topology, layout, d_model=16, n_heads=2)
    attention = {name: n for (kind, name), n in gets.items() if kind == "attention"}
    assert attention == {t: 1 for t in TYPES}
    assert sorted(reads.values()) == [1] * len(CONNS)
    # a layer that was not compiled keeps its defaults: the reference kernel for the softmax family
    (kern,) = layer.executor.kernels.values()
    assert type(kern) is ReferenceKernel
    gets.clear(), listings.clear(), reads.clear()
    x = torch.randn(1, layer.plan.n, 16)
    layer(x)
    layer(x, active_regions={"a"})
    assert not gets and not listings and not reads
