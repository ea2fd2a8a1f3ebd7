"""Issue 23, the rule in canvas layers: for every registered attention type (builtins, the
installed plugins' types, and plugin-style types registered here), on random layouts, offsets
(same-frame, previous-frame, None), periods and fills, the Jacobian pattern of a ``CanvasAttention``
layer's output lies inside the linked pattern computed independently by the dense reference
(``tests/_reference/dependency.py``), and linked keys really carry signal.  Plus: key sets of
equal shape run as one call, and a type that reads outside its key sets is refused at build."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import canvas_core.plugins as P  # noqa: E402
import canvas_ref_dependency as dep  # noqa: E402
import canvas_ref_strategies as gen  # noqa: E402
import canvas_ref_toy_types as toy  # noqa: E402
from canvas_ref_dense_reference import positions  # noqa: E402
from canvas_core.errors import AttentionContractError  # noqa: E402
from canvas_core.runtime.canvas_attention import CanvasAttention  # noqa: E402
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection  # noqa: E402


class ScanPlugin(toy.RunningMeanScan):
    """The shared test scan (tests/_reference/toy_types.py), under the name this module uses."""


class LatentPlugin(torch.nn.Module):
    """A plugin-style compressor that takes key_mask but reads the union of the keys (as perceiver
    did): not declared exact, so the runtime calls it per key set."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.lat = torch.nn.Linear(d_model, d_model)

    def forward(self, queries, keys, values, key_mask=None):
        w = torch.ones(keys.shape[:2], dtype=keys.dtype)
        if key_mask is not None:
            w = w * key_mask.to(keys.dtype).any(0)[None]
        pooled = (w[..., None] * values).sum(1, keepdim=True) / w.sum(1).clamp_min(1)[:, None, None]
        return self.lat(pooled).expand_as(queries) * queries.tanh()


TEST_TYPES = {"t23_scan": ScanPlugin, "t23_latent": LatentPlugin}


@pytest.fixture(scope="module", autouse=True)
def _plugin_types():
    for name, cls in TEST_TYPES.items():
        P.register_attention(name, cls)
    yield
    for name in TEST_TYPES:
        P.unregister_attention(name)


ALL_TYPES = sorted(set(P.list_attention_types()) | set(TEST_TYPES))
SLOW = {"mamba", "hyena", "rwkv", "canvas_read", "canvas_write", "mixture"}
POSITIONAL = {"copy", "rwkv", "hyena", "mamba", "t23_scan"}


def _layer(topo, layout, seed=0):
    torch.manual_seed(seed)
    layer = CanvasAttention(topo, layout, d_model=8, n_heads=2).double()
    dep.perturb_parameters(layer, seed=seed)  # opens gated's tanh(alpha): no zero hides a read
    return layer


@st.composite
def cases(draw, fn):
    layout = draw(gen.layouts(max_T=4, max_side=3, max_regions=3))
    topo = draw(gen.topologies(layout, fns=(fn,), max_conns=3))
    extra = draw(st.sampled_from([None, 0, -1]))  # one more connection, same- or previous-frame
    if extra is not None:
        names = list(layout.regions)
        c = Connection(draw(st.sampled_from(names)), draw(st.sampled_from(names)), fn=fn, t_src=0, t_dst=extra,
                       temporal_fill=draw(st.sampled_from(gen.FILLS)))
        topo = CanvasTopology(connections=list(topo.connections) + [c])
    return layout, topo


@pytest.mark.parametrize("fn", ALL_TYPES)
def test_every_type_reads_only_linked_keys_in_a_canvas_layer(fn):
    n = 5 if fn in SLOW else 12

    @settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=cases(fn), seed=st.integers(0, 3))
    def check(case, seed):
        layout, topo = case
        layer = _layer(topo, layout, seed)
        x = torch.randn(1, layout.num_positions, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        got = dep.dependency_pattern(layer, x)
        linked = dep.linked_pattern(topo, layout)
        eye = torch.eye(layout.num_positions, dtype=torch.bool)
        where = positions(layout)
        bad = dep.first_violation(got, linked | eye, lambda p: f"#{p} (t, ...)={where[p]}")
        assert bad is None, f"{fn}: {bad}; topology {topo.connections}"
        # linked keys carry signal (copy reads the aligned key only, a scan reads the keys up to its
        # causal read position: for those, the key they read may be the query's own position)
        others = linked if fn in POSITIONAL else linked & ~eye
        if fn != "none" and bool(others.any()):
            assert bool((got & others).any()), f"{fn}: no linked key carries signal; {topo.connections}"

    check()


def test_same_frame_and_previous_frame_probe_of_the_issue():
    """The issue's probe, T = 4: b <- a same-frame, then previous-frame; every type, exactly."""
    layout = CanvasLayout(T=4, H=2, W=2, d_model=8, regions={"a": (0, 4, 0, 1, 0, 2), "b": (0, 4, 1, 2, 0, 2)})
    where = positions(layout)
    for fn in ALL_TYPES:
        for t_dst in (0, -1):
            topo = CanvasTopology(connections=[Connection("b", "a", fn=fn, t_src=0, t_dst=t_dst)])
            got = dep.dependency_pattern(_layer(topo, layout), torch.randn(1, 16, 8, dtype=torch.float64))
            linked = dep.linked_pattern(topo, layout)
            bad = dep.first_violation(got, linked | torch.eye(16, dtype=torch.bool), lambda p: str(where[p]))
            assert bad is None, f"{fn}, t_dst={t_dst}: {bad}"
            if fn != "none":
                assert bool((got & linked).any()), f"{fn}, t_dst={t_dst}: linked frames carry no signal"


class CountingScan(ScanPlugin):
    calls = []

    def forward(self, queries, keys, values):
        CountingScan.calls.append((tuple(queries.shape), tuple(keys.shape)))
        return super().forward(queries, keys, values)


def test_key_sets_of_equal_shape_run_as_one_call():
    """Same-frame links over T = 6 frames: 6 key sets of one shape -> ONE call, batch B * 6; a
    previous-frame link adds one more shape (frame 0 has no key: never passed)."""
    layout = CanvasLayout(T=6, H=2, W=3, d_model=8, regions={"v": (0, 6, 0, 1, 0, 3), "a": (0, 6, 1, 2, 0, 2)})
    topo = CanvasTopology(connections=[Connection("a", "v", fn="t23_count", t_src=0, t_dst=0)])
    P.register_attention("t23_count", CountingScan)
    try:
        layer = CanvasAttention(topo, layout, d_model=8, n_heads=2)
        CountingScan.calls.clear()
        layer(torch.randn(2, layout.num_positions, 8))
        assert CountingScan.calls == [((12, 2, 8), (12, 3, 8))]
        topo = CanvasTopology(connections=[Connection("a", "v", fn="t23_count", t_src=0, t_dst=-1, temporal_fill="drop")])
        layer = CanvasAttention(topo, layout, d_model=8, n_heads=2)
        CountingScan.calls.clear()
        layer(torch.randn(2, layout.num_positions, 8))
        assert CountingScan.calls == [((10, 2, 8), (10, 3, 8))]
    finally:
        P.unregister_attention("t23_count")


def test_plugin_type_that_leaks_or_returns_a_wrong_shape_is_refused_at_build():
    layout = CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})

    class Leaky(LatentPlugin):
        key_mask_exact = True  # a false promise: it reads the union

    class MixesRows(ScanPlugin):
        def forward(self, queries, keys, values):  # mixes the stacked key sets (batch rows)
            return super().forward(queries, keys, values) + values.mean(dim=(0, 1), keepdim=True)

    class WrongShape(ScanPlugin):
        def forward(self, queries, keys, values):
            return super().forward(queries, keys, values)[:, :1]

    class WrongDtype(ScanPlugin):
        def forward(self, queries, keys, values):
            return super().forward(queries, keys, values).half()

    class ReturnsNaN(ScanPlugin):  # per query, but NaN: not to be reported as a leak
        def forward(self, queries, keys, values):
            return super().forward(queries, keys, values) * float("nan")

    cases_ = {"t23_leaky": (Leaky, "reads outside the linked keys.*depends on key"),
              "t23_mixes": (MixesRows, "reads outside the linked keys"),
              "t23_shape": (WrongShape, r"returned shape \(2, 1, 8\).*expected \(B, Nq, D\) = \(2, 2, 8\)"),
              "t23_dtype": (WrongDtype, "returned dtype torch.float16 for torch.float32 inputs"),
              "t23_nan": (ReturnsNaN, "returns NaN or infinite values on finite inputs")}
    for name, (cls, msg) in cases_.items():
        P.register_attention(name, cls)
        try:
            topo = CanvasTopology(connections=[Connection("b", "a", fn=name, t_src=0, t_dst=0)])
            with pytest.raises(AttentionContractError, match=rf"connection #0 'b' -> 'a' \(fn '{name}'\).*{msg}"):
                CanvasAttention(topo, layout, d_model=8, n_heads=2)
        finally:
            P.unregister_attention(name)


def test_wrong_shape_at_run_time_names_the_type_instead_of_broadcasting():
    layout = CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})
    topo = CanvasTopology(connections=[Connection("b", "a", fn="t23_scan", t_src=0, t_dst=0)])
    layer = CanvasAttention(topo, layout, d_model=8, n_heads=2)
    mod = layer.fn_modules["t23_scan"]
    mod.forward = lambda q, k, v: q[:, :1] * 2  # broadcastable, but wrong: (B*G, 1, D) for (B*G, 2, D)
    with pytest.raises(AttentionContractError, match=r"attention type 't23_scan'.*returned shape \(4, 1, 8\)"):
        layer(torch.randn(2, layout.num_positions, 8))


@pytest.mark.parametrize("fn", ["cosine_attention", "sigmoid_attention", "sparse_attention", "gated", "pooling"])
def test_exact_types_give_the_same_rows_per_key_set_and_masked(fn):
    """A builtin exact-mask type runs per key set when that reads at most half the pairs (here:
    6 frames, same-frame links) and as one masked call otherwise; both give the same layer output."""
    layout = CanvasLayout(T=6, H=3, W=3, d_model=8, regions={"v": (0, 6, 0, 2, 0, 3), "a": (0, 6, 2, 3, 0, 3)})
    topo = CanvasTopology(connections=[Connection("a", "v", fn=fn, t_src=0, t_dst=0),
                                       Connection("v", "v", fn=fn, t_src=0, t_dst=-1, temporal_fill="hold")])
    layer = _layer(topo, layout)
    assert layer.executor.key_sets_cheaper(0)
    x = torch.randn(2, layout.num_positions, 8, dtype=torch.float64)
    per_set = layer(x)
    layer.executor.o0_sets_cheaper = False  # force the one masked call over the union
    torch.testing.assert_close(layer(x), per_set, rtol=1e-10, atol=1e-12)
