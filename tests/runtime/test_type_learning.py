"""Issue 23, every type learns in canvas layers: for every registered type with parameters, on
random layouts and topologies, with only that type's parameters trainable, three Adam steps
toward a random target move the layer's output; and a connection whose parameters get no gradient
at initialisation is flagged (``CanvasAttention.init_gradient_problems`` and the notes of the
resolution report)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import canvas_core.plugins as P  # noqa: E402
import canvas_ref_dependency as dep  # noqa: E402
import canvas_ref_strategies as gen  # noqa: E402
from canvas_core.compiler.report import format_resolutions  # noqa: E402
from canvas_core.plugins.builtin import SOFTMAX_FAMILY  # noqa: E402
from canvas_core.runtime.canvas_attention import CanvasAttention, _key  # noqa: E402
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection  # noqa: E402

PARAMETER_FREE = {"none", "copy"}
TYPES = sorted(set(P.list_attention_types()) - PARAMETER_FREE)


def _own_parameters(layer, fn):
    if fn in SOFTMAX_FAMILY:  # the softmax family's parameters: the layer's shared projections
        return [layer.qkv.weight, layer.qkv.bias, layer.out_proj.weight, layer.out_proj.bias]
    return list(layer.fn_modules[_key(fn)].parameters())


@pytest.mark.parametrize("fn", TYPES)
def test_every_type_learns_in_a_canvas_layer(fn):
    @settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data):
        layout = data.draw(gen.layouts(max_T=3, max_side=3, max_regions=3))
        topo = data.draw(gen.topologies(layout, fns=(fn,), max_conns=3))
        linked = dep.linked_pattern(topo, layout)
        assume(bool((linked & ~torch.eye(layout.num_positions, dtype=torch.bool)).any()))
        torch.manual_seed(0)
        layer = CanvasAttention(topo, layout, d_model=8, n_heads=2).double()
        assert fn not in layer.init_gradient_problems
        own = _own_parameters(layer, fn)
        for p in layer.parameters():
            p.requires_grad_(False)
        for p in own:
            p.requires_grad_(True)
        x = torch.randn(2, layout.num_positions, 8, dtype=torch.float64)
        with torch.no_grad():
            before = layer(x).clone()
        target = torch.randn_like(before)
        opt = torch.optim.Adam(own, lr=1e-2)
        for _ in range(3):
            opt.zero_grad()
            (layer(x) - target).pow(2).mean().backward()
            opt.step()
        with torch.no_grad():
            moved = float((layer(x) - before).abs().max())
        assert moved > 1e-6, f"{fn}: 3 Adam steps on its own parameters moved the output by {moved}"

    check()


class TwoZeroGates(torch.nn.Module):
    """A plugin-style type that cannot learn: two zero-initialised factors in series."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(()))
        self.b = torch.nn.Parameter(torch.zeros(()))
        self.p = torch.nn.Linear(d_model, d_model)

    def forward(self, queries, keys, values):
        return self.a * self.b * self.p(values.mean(1, keepdim=True)).expand_as(queries)


def test_a_connection_that_cannot_learn_is_flagged():
    layout = CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})
    P.register_attention("t23_two_zero_gates", TwoZeroGates)
    try:
        topo = CanvasTopology(connections=[Connection("a", "a"),
                                           Connection("b", "a", fn="t23_two_zero_gates", t_src=0, t_dst=0)])
        layer = CanvasAttention(topo, layout, d_model=8, n_heads=2)
        problem = layer.init_gradient_problems["t23_two_zero_gates"]
        assert "no parameter of 't23_two_zero_gates' receives a gradient at initialisation" in problem
        table = format_resolutions(layer.plan.resolutions)
        note = next(line for line in table.splitlines() if line.strip().startswith("#1:"))
        assert "in a canvas layer: no parameter of 't23_two_zero_gates' receives a gradient" in note
        # the builtins are not flagged
        ok = CanvasAttention(CanvasTopology(connections=[Connection("b", "a", fn=f) for f in ("gated", "rwkv")]),
                             layout, d_model=8, n_heads=2)
        assert ok.init_gradient_problems == {}
    finally:
        P.unregister_attention("t23_two_zero_gates")


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_layers_built_without_autograd_flag_no_type_and_copy_installs(mode):
    # built under no_grad the probe must still ask autograd (nothing wrong with the types); under
    # inference_mode it cannot, and flags nothing rather than blaming every type

    from tests.looping._backbone_setup import inputs, make, user_layout
    from canvas_core.looping import get_adapter, graft_looped_blocks

    ctx = torch.no_grad if mode == "no_grad" else torch.inference_mode
    lay = CanvasLayout(T=2, H=2, W=4, d_model=16, regions={"a": (0, 2, 0, 1, 0, 4), "b": (0, 2, 1, 2, 0, 4)})
    with ctx():
        for fn in ("pooling", "linear_attention", "gated", "hyena", "mamba"):  # mamba: a plugin type
            layer = CanvasAttention(CanvasTopology(connections=[Connection("b", "a", fn=fn)]), lay, n_heads=2)
            assert layer.init_gradient_problems == {}, fn
    if mode != "no_grad":
        return
    m = make("cogvideox", torch.float64)
    kw = inputs("cogvideox", torch.float64)
    graft_looped_blocks(m, max_loops=1)
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, kw), 1)
    dense = [Connection(a, b) for a in ("top", "bottom", "extra") for b in ("top", "bottom", "extra")]
    with torch.no_grad():
        for fn in ("copy", "pooling"):  # copy: no parameter of its own, the block's gate only
            ad.install_topology(m, CanvasTopology(connections=dense + [Connection("top", "bottom", fn=fn)]), tokens)
            assert "NO GRADIENT AT INIT" not in ad.installed_topology(m).report(), fn


def test_a_gate_frozen_at_zero_is_flagged_and_a_frozen_open_gate_is_not():
    from canvas_core.runtime.type_probe import init_gradient_problem

    from canvas_core.attention.simple import LinearAttention

    module = LinearAttention(16, 2)
    closed = torch.nn.Parameter(torch.zeros(()), requires_grad=False)
    opened = torch.nn.Parameter(torch.ones(()), requires_grad=False)
    assert "frozen at 0" in init_gradient_problem(module, "linear_attention", 16, closed)
    assert init_gradient_problem(module, "linear_attention", 16, opened) is None


def test_a_meta_gate_is_not_read():
    from canvas_core.attention.simple import LinearAttention
    from canvas_core.runtime.type_probe import init_gradient_problem

    assert init_gradient_problem(LinearAttention(16, 2), "linear_attention", 16, torch.zeros((), device="meta")) is None
