"""canvas-backend-flex: FlexKernel equals a dense reference; its BlockMask matches the tiles."""

from __future__ import annotations

import importlib.util
import math
import pathlib
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import canvas_backend_flex
from canvas_backend_flex.kernel import FlexKernel, kv_block_tensors
from canvas_core.compiler import lower
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection

_ROOT = pathlib.Path(__file__).resolve().parents[3]


def _load(name, rel):
    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, _ROOT / rel)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return mod


ref = _load("canvas_dense_reference", "tests/_reference/dense_reference.py")
strategies = _load("canvas_reference_strategies", "tests/_reference/strategies.py")


def dense_softmax(q, k, v, W, scale):
    """Obvious reference: softmax(scale q.k + log w) over linked keys, zeros for keyless rows."""
    W = W.to(q.dtype)
    bias = torch.where(W > 0, W.clamp_min(1e-30).log(), torch.full_like(W, -math.inf))
    p = torch.softmax(q @ k.transpose(-1, -2) * scale + bias, dim=-1).nan_to_num(0.0)
    return p @ v


def small_case():
    layout = CanvasLayout(T=3, H=4, W=5, d_model=8, regions={
        "a": (0, 3, 0, 2, 0, 5), "b": (0, 3, 2, 4, 0, 3), "c": (1, 3, 2, 4, 3, 5)})
    topology = CanvasTopology(connections=[
        Connection("a", "a"), Connection("a", "b", weight=0.5, t_src=0, t_dst=-1),
        Connection("b", "c", weight=2.0), Connection("c", "c", t_src=0, t_dst=0)])
    return layout, topology


@pytest.mark.parametrize("block_size", [4, 16, 128])
def test_eager_matches_reference(block_size):
    layout, topology = small_case()
    plan = lower(topology, layout)
    W = ref.reference_mask(topology, layout).float()
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, plan.n, 8) for _ in range(3))
    kern = FlexKernel(plan.groups["cross_attention"], plan, n_heads=3, head_dim=8,
                      block_size=block_size, compile=False)
    out = kern(q, k, v, scale=0.3)
    torch.testing.assert_close(out, dense_softmax(q, k, v, W, 0.3), atol=1e-5, rtol=1e-5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), block_size=st.sampled_from([1, 3, 8, 64]))
def test_property_eager_matches_reference(data, block_size):
    layout = data.draw(strategies.layouts())
    topology = data.draw(strategies.topologies(layout))
    plan = lower(topology, layout)
    if "cross_attention" not in plan.groups:
        return
    W = ref.reference_mask(topology, layout).float()
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, plan.n, 4, generator=g) for _ in range(3))
    kern = FlexKernel(plan.groups["cross_attention"], plan, block_size=block_size, compile=False)
    out = kern(q, k, v, scale=0.5)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, dense_softmax(q, k, v, W, 0.5), atol=1e-5, rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), block_size=st.sampled_from([1, 2, 5, 16]))
def test_block_structure_matches_dense_tiles(data, block_size):
    """kv/full block lists against tiles computed by brute force from the dense packed mask."""
    layout = data.draw(strategies.layouts())
    topology = data.draw(strategies.topologies(layout))
    plan = lower(topology, layout)
    if "cross_attention" not in plan.groups:
        return
    kern = FlexKernel(plan.groups["cross_attention"], plan, block_size=block_size, compile=False)
    W = ref.reference_mask(topology, layout).numpy()
    perm = plan.perm
    Wp = W[np.ix_(perm, perm)]  # packed order
    n, bs = plan.n, block_size
    nb = -(-n // bs)
    for qb in range(nb):
        full, partial = [], []
        for kb in range(nb):
            tile = Wp[qb * bs:(qb + 1) * bs, kb * bs:(kb + 1) * bs]
            if not (tile > 0).any():
                continue
            if (tile > 0).all() and np.allclose(tile, tile.flat[0]):
                full.append(kb)
            else:
                partial.append(kb)
        assert kern.full_num[0, 0, qb].item() == len(full)
        assert kern.kv_num[0, 0, qb].item() == len(partial)
        assert kern.full_idx[0, 0, qb, : len(full)].tolist() == full
        assert kern.kv_idx[0, 0, qb, : len(partial)].tolist() == partial
    # the BlockMask FlexAttention receives has exactly these lists
    bm = kern.block_mask()
    assert torch.equal(bm.kv_num_blocks, kern.kv_num) and torch.equal(bm.full_kv_num_blocks, kern.full_num)


def test_kv_block_tensors_padding():
    state = np.array([[0, 1, 2], [2, 2, 0], [0, 0, 0]], dtype=np.int8)
    kv_num, kv_idx, full_num, full_idx = kv_block_tensors(state)
    assert kv_num.shape == (1, 1, 3) and kv_idx.shape == (1, 1, 3, 3)
    assert kv_num.flatten().tolist() == [1, 0, 0] and kv_idx[0, 0, 0, 0].item() == 1
    assert full_num.flatten().tolist() == [1, 2, 0]
    assert full_idx[0, 0, 1, :2].tolist() == [0, 1]
    assert kv_num.dtype == torch.int32


def test_keyless_queries_are_zero():
    layout = CanvasLayout(T=2, H=2, W=2, d_model=4, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})
    topology = CanvasTopology(connections=[Connection("a", "b")])  # b's queries have no key
    plan = lower(topology, layout)
    kern = FlexKernel(plan.groups["cross_attention"], plan, block_size=2, compile=False)
    q, k, v = (torch.randn(1, 1, plan.n, 4) for _ in range(3))
    out = kern(q, k, v, scale=0.5)
    b_idx = torch.tensor(layout.region_indices("b"))
    assert torch.equal(out[0, 0, b_idx], torch.zeros(len(b_idx), 4))
    assert torch.isfinite(out).all()


def test_cpu_training_refused_clearly():
    layout, topology = small_case()
    plan = lower(topology, layout)
    kern = FlexKernel(plan.groups["cross_attention"], plan, compile=False)
    from canvas_core.errors import UnavailableError

    q = torch.randn(1, 1, plan.n, 8, requires_grad=True)
    with pytest.raises(UnavailableError, match="no backward pass"):
        kern(q, q, q, scale=1.0)
    with torch.no_grad():
        assert kern(q, q, q, scale=1.0).shape == q.shape


def test_bad_inputs():
    layout, topology = small_case()
    plan = lower(topology, layout)
    kern = FlexKernel(plan.groups["cross_attention"], plan, compile=False)
    from canvas_core.errors import ShapeError, UnavailableError

    q = torch.randn(1, 1, plan.n + 1, 8)
    with pytest.raises(ShapeError, match="expects q, k, v"):
        kern(q, q, q, scale=1.0)
    q = torch.randn(1, 1, plan.n, 8)
    with pytest.raises(UnavailableError, match="dropout"):
        kern(q, q, q, scale=1.0, dropout_p=0.1)


def test_check_reports_old_torch(monkeypatch):
    from canvas_core import RuntimeContext

    assert canvas_backend_flex.check(RuntimeContext(device="cuda")) == []
    assert canvas_backend_flex.check_cpu(RuntimeContext(device="cpu", requires_grad=False)) == []
    assert "no backward" in canvas_backend_flex.check_cpu(RuntimeContext(device="cpu"))[0]
    monkeypatch.setattr(canvas_backend_flex, "_torch_version", lambda: (2, 4, "2.4.1"))
    reasons = canvas_backend_flex.check(RuntimeContext(device="cuda"))
    assert reasons and "torch >= 2.5" in reasons[0] and "2.4.1" in reasons[0]


def test_registration_and_resolution():
    from canvas_core.compiler import ProgramCompiler
    from canvas_core.plugins import PluginHost, use_host
    from canvas_core.program import CanvasProgram
    from canvas_core.schema import CanvasSchema

    layout, topology = small_case()
    program = CanvasProgram(schema=CanvasSchema(layout=layout, topology=topology))
    with use_host(PluginHost(autoload=False)) as host:
        host.register_plugin(canvas_backend_flex, name="flex-under-test", distribution="canvas-backend-flex")
        kernels = host.registry("kernels")
        flex, flex_cpu = kernels.get("flex"), kernels.get("flex_cpu")
        assert flex.supports == ("cross_attention",) and flex.priority == 20 and flex.devices == ("cuda",)
        assert flex_cpu.devices == ("cpu",) and flex_cpu.priority < 0
        auto = ProgramCompiler(program).compile()
        r = auto.plan.resolutions[0]
        if not torch.cuda.is_available():
            assert r.kernel == "reference" and "flex" in dict(r.rejected)
        chosen = ProgramCompiler(program).compile(kernel="flex_cpu", requires_grad=False)
        assert {x.kernel for x in chosen.plan.resolutions.values()} == {"flex_cpu"}
        from canvas_core.errors import UnavailableError

        with pytest.raises(UnavailableError, match="no backward pass on CPU"):
            ProgramCompiler(program).compile(kernel="flex_cpu")  # training: refused, with the reason
        # the runtime builds it through the registry
        built = flex_cpu.create(auto.plan.groups["cross_attention"], auto.plan, n_heads=2, head_dim=4)
        assert isinstance(built, FlexKernel)


@pytest.mark.slow
def test_compiled_cpu_matches_reference():
    """FlexAttention compiled by torch.compile on CPU (the fused path; ~20 s first compile)."""
    layout, topology = small_case()
    plan = lower(topology, layout)
    W = ref.reference_mask(topology, layout).float()
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, plan.n, 16) for _ in range(3))
    kern = FlexKernel(plan.groups["cross_attention"], plan, block_size=16)
    assert kern.compile
    out = kern(q, k, v, scale=0.25)
    torch.testing.assert_close(out, dense_softmax(q, k, v, W, 0.25), atol=1e-4, rtol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the 'flex' kernel is registered for CUDA")
def test_cuda_compiled_matches_reference():
    layout, topology = small_case()
    plan = lower(topology, layout)
    W = ref.reference_mask(topology, layout).float().cuda()
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, plan.n, 64, device="cuda") for _ in range(3))
    kern = FlexKernel(plan.groups["cross_attention"], plan, block_size=128).cuda()
    out = kern(q, k, v, scale=0.125)
    torch.testing.assert_close(out, dense_softmax(q, k, v, W, 0.125), atol=2e-3, rtol=2e-3)
    kern16 = FlexKernel(plan.groups["cross_attention"], plan, block_size=128).cuda()
    out16 = kern16(q.half(), k.half(), v.half(), scale=0.125)
    torch.testing.assert_close(out16.float(), dense_softmax(q, k, v, W, 0.125), atol=2e-2, rtol=2e-2)


def test_flex_cpu_on_another_device_gives_one_reason_not_a_contradiction():
    # audit: `canvas compile --kernel flex_cpu --device cuda` said "runs on cpu only, not on cuda;
    # FlexAttention has no backward pass on CPU ...; compile ... or on CUDA"
    from canvas_core import RuntimeContext

    assert canvas_backend_flex.check_cpu(RuntimeContext(device="cuda", requires_grad=True)) == []
    reasons = canvas_backend_flex.check_cpu(RuntimeContext(device="cpu", requires_grad=True))
    assert len(reasons) == 1 and "no backward pass on CPU" in reasons[0]
    assert canvas_backend_flex.check_cpu(RuntimeContext(device="cpu", requires_grad=False)) == []
