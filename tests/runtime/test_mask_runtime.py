"""Fused runtime (CanvasAttention) equals the dense reference for tile and sparse mask specs."""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from canvas_core import CanvasLayout, CanvasTopology, Connection, MaskSpec  # noqa: E402
from canvas_core.runtime.canvas_attention import CanvasAttention  # noqa: E402


def _ref():
    name = "canvas_ref_dense_reference"
    if name not in sys.modules:
        path = pathlib.Path(__file__).resolve().parents[1] / "_reference" / "dense_reference.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _layout():
    # same spatial box at different frames, so tile masks restrict (tiles are anchored at the src
    # region's corner and a src tile sees the dst positions inside its own cell)
    return CanvasLayout(T=3, d_model=8, spatial_shape=(4, 4), regions={
        "vis": (0, 2, 0, 4, 0, 4), "dep": (2, 3, 0, 4, 0, 4)})


def _masks():
    rng = np.random.default_rng(1)
    return [MaskSpec(kind="tile", tile_h=2, tile_w=4), MaskSpec(kind="tile", tile_shape=(1, 2)),
            MaskSpec(kind="sparse", pattern=rng.random((16, 16)) < 0.35)]


@pytest.mark.parametrize("kernel", [None, "dense", "sparse"])
@pytest.mark.parametrize("mi", range(3))
def test_fused_equals_reference(kernel, mi):
    lay, mask = _layout(), _masks()[mi]
    topo = CanvasTopology(connections=[
        Connection("vis", "dep", mask=mask), Connection("dep", "vis", weight=0.5, t_src=0, t_dst=-1, mask=mask),
        Connection("vis", "vis", t_src=0, t_dst=0)])
    torch.manual_seed(0)
    mod = CanvasAttention(topo, lay, d_model=8, n_heads=2, kernel=kernel,
                          kernel_options={"block_size": 4} if kernel == "sparse" else None).double()
    x = torch.randn(2, lay.num_positions, 8, dtype=torch.float64)
    got = mod(x)
    sp = (mod.qkv.weight, mod.qkv.bias, mod.out_proj.weight, mod.out_proj.bias)
    want = _ref().reference_layer(x, topo, lay, softmax_params=sp, n_heads=2)
    assert torch.allclose(got, want, atol=1e-9)
    # the mask really restricts: the unmasked topology gives a different answer
    plain = CanvasTopology(connections=[Connection(c.src, c.dst, c.weight, c.t_src, c.t_dst) for c in topo.connections])
    unmasked = _ref().reference_layer(x, plain, lay, softmax_params=sp, n_heads=2)
    assert not torch.allclose(unmasked, want, atol=1e-6)


def test_lowering_has_no_dense_block_for_tile_mask():
    from canvas_core.compiler.lowering import lower
    lay = _layout()
    masked = lower(CanvasTopology(connections=[Connection("vis", "dep", mask=MaskSpec(kind="tile", tile_h=1, tile_w=4))]), lay)
    full = lower(CanvasTopology(connections=[Connection("vis", "dep")]), lay)

    def area(plan):
        groups = plan.groups.values() if isinstance(plan.groups, dict) else plan.groups
        return sum(g.area() for g in groups)
    a_m, a_f = area(masked), area(full)
    assert a_m * 4 == a_f  # tile rows of height 1 out of 4: a quarter of the pairs
