"""CanvasAttention runs what the compiler's resolution pass chose (kernel per fn type)."""

import torch

import canvas_core.plugins as P
from canvas_core.compiler import ProgramCompiler
from canvas_core.plugins import PluginHost, use_host
from canvas_core.runtime.canvas_attention import CanvasAttention
from canvas_core.runtime.kernels import ReferenceKernel
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection


class CountingKernel(ReferenceKernel):
    """The reference math, counting its calls: proves which kernel the layer runs."""

    calls = 0

    def forward(self, q, k, v, *, scale, dropout_p=0.0):
        type(self).calls += 1
        return super().forward(q, k, v, scale=scale, dropout_p=dropout_p)


def _schema(extra=()):
    layout = CanvasLayout(T=2, H=2, W=4, d_model=16, regions={
        "a": (0, 2, 0, 2, 0, 2), "b": (0, 2, 0, 2, 2, 4)})
    topo = CanvasTopology(connections=[Connection("a", "b"), Connection("b", "a"), *extra])
    return CanvasSchema(layout=layout, topology=topo)


def test_layer_runs_the_kernel_the_compiler_chose():
    with use_host(PluginHost(entry_points=lambda: [])):
        P.register_kernel("counting", CountingKernel, supports=("cross_attention",), priority=90)
        compiled = ProgramCompiler(_schema()).compile(device="cpu")
        kernels = {r.kernel for r in compiled.resolutions.values()}
        assert kernels == {"counting"}
        layer = CanvasAttention(compiled.plan, d_model=16, n_heads=2)
        (kern,) = layer.executor.kernels.values()
        assert isinstance(kern, CountingKernel)
        before = CountingKernel.calls
        x = torch.randn(2, compiled.plan.n, 16)
        y = layer(x)
        assert CountingKernel.calls == before + 1
        # the same math as the reference kernel with the same weights
        plain = CanvasAttention(compiled.plan, d_model=16, n_heads=2, kernel="reference")
        plain.load_state_dict(layer.state_dict())
        torch.testing.assert_close(plain(x), y)


def test_non_softmax_type_gets_its_resolved_kernel():
    import pytest

    pytest.importorskip("canvas_plugin_mamba")
    schema = _schema(extra=[Connection("a", "a", fn="mamba")])
    compiled = ProgramCompiler(schema).compile(device="cpu")
    (res,) = [r for r in compiled.resolutions.values() if r.requested == "mamba"]
    from canvas_plugin_mamba import cpu_kernel

    # no CUDA here: the compiled CPU scan where it builds, else the PyTorch scan, recorded as such
    expected = "mamba_cpu" if cpu_kernel.available() else "mamba_torch"
    assert res.kernel == expected
    layer = CanvasAttention(compiled.plan, d_model=16, n_heads=2)
    assert layer.fn_modules["mamba"].kernel == expected
    y = layer(torch.randn(1, compiled.plan.n, 16))
    assert layer.fn_modules["mamba"].kernel_used == expected and torch.isfinite(y).all()
