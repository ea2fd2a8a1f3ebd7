"""canvas-backend-xformers: registration, rejection recorded in the report, bias construction."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

import canvas_backend_xformers
from canvas_backend_xformers.kernel import XFormersKernel, additive_bias
from canvas_core.compiler import ProgramCompiler
from canvas_core.compiler import lower
from canvas_core.errors import UnavailableError
from canvas_core.plugins import PluginHost, use_host
from canvas_core.program import CanvasProgram
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection

HAS_XFORMERS = importlib.util.find_spec("xformers") is not None


def case():
    layout = CanvasLayout(T=2, H=3, W=3, d_model=8, regions={
        "a": (0, 2, 0, 1, 0, 3), "b": (0, 2, 1, 3, 0, 2), "c": (0, 1, 1, 3, 2, 3)})
    topology = CanvasTopology(connections=[
        Connection("a", "a"), Connection("a", "b", weight=0.5), Connection("b", "a", weight=2.0, t_src=0, t_dst=0)])
    return layout, topology


def isolated_host():
    host = PluginHost(autoload=False)
    host.register_plugin(canvas_backend_xformers, name="xformers-under-test", distribution="canvas-backend-xformers")
    return host


def test_registration_metadata():
    with use_host(isolated_host()) as host:
        spec = host.registry("kernels").get("xformers")
        assert spec.supports == ("cross_attention",)
        assert spec.requires == ("xformers",) and spec.devices == ("cuda",)
        assert spec.distribution == "canvas-backend-xformers"


@pytest.mark.skipif(HAS_XFORMERS and torch.cuda.is_available(), reason="xformers can run here")
def test_rejected_with_reason_in_resolution_report():
    layout, topology = case()
    program = CanvasProgram(schema=CanvasSchema(layout=layout, topology=topology))
    with use_host(isolated_host()):
        compiled = ProgramCompiler(program).compile()
        r = compiled.plan.resolutions[0]
        assert r.kernel == "reference" and r.fallback
        reasons = dict(r.rejected)["xformers"]
        if not HAS_XFORMERS:
            assert "requires the Python package 'xformers', which is not installed" in reasons
        assert "runs on cuda only, not on cpu" in reasons
        text = compiled.report()
        assert "xformers (#0, #1, #2): " in text and "not installed" in text
        # asking for it explicitly fails and says why
        with pytest.raises(UnavailableError, match="xformers"):
            ProgramCompiler(program).compile(kernel="xformers")


@pytest.mark.skipif(HAS_XFORMERS, reason="xformers is installed")
def test_building_without_xformers_is_a_clear_error():
    layout, topology = case()
    plan = lower(topology, layout)
    with pytest.raises(UnavailableError, match="pip install xformers"):
        XFormersKernel(plan.groups["cross_attention"], plan)


def test_additive_bias_matches_weights():
    layout, topology = case()
    plan = lower(topology, layout)
    bias, has = additive_bias(plan.groups["cross_attention"], plan)
    W = topology.to_attention_mask(layout)
    linked = W > 0
    assert torch.equal(has, linked.any(dim=1))
    rows = has.nonzero().flatten()
    torch.testing.assert_close(bias[rows][linked[rows]], W[rows][linked[rows]].log())
    assert torch.isinf(bias[rows][~linked[rows]]).all()
    assert (bias[~has] == 0).all()  # keyless rows: finite (output zeroed by the kernel)


@pytest.mark.cuda
@pytest.mark.skipif(not (HAS_XFORMERS and torch.cuda.is_available()), reason="needs CUDA and xformers")
def test_cuda_matches_dense_reference():
    layout, topology = case()
    plan = lower(topology, layout)
    kern = XFormersKernel(plan.groups["cross_attention"], plan).cuda()
    q, k, v = (torch.randn(2, 2, plan.n, 16, device="cuda") for _ in range(3))
    W = topology.to_attention_mask(layout).cuda()
    bias = torch.where(W > 0, W.log(), torch.full_like(W, -math.inf))
    ref = (torch.softmax(q @ k.transpose(-1, -2) * 0.25 + bias, -1).nan_to_num() @ v)
    torch.testing.assert_close(kern(q, k, v, scale=0.25), ref, atol=2e-3, rtol=2e-3)


def test_tiny_weights_keep_their_log_in_the_bias():
    """1e-300 is -690.8 in the bias (a float32 weight matrix made it 0, a 1e-30 clamp -69.1) and
    2e-300 weighs twice 1e-300, as the CPU kernels and ``to_additive_mask`` have them."""
    from canvas_core import CanvasLayout, CanvasTopology, Connection

    layout = CanvasLayout(T=1, H=1, W=3, d_model=4,
                          regions={"q": (0, 1, 0, 1, 0, 1), "a": (0, 1, 0, 1, 1, 2), "b": (0, 1, 0, 1, 2, 3)})
    topology = CanvasTopology(connections=[Connection("q", "a", weight=1e-300), Connection("q", "b", weight=2e-300)])
    plan = lower(topology, layout)
    bias, has = additive_bias(plan.groups["cross_attention"], plan)
    row = bias[0][torch.isfinite(bias[0])].double()
    assert has[0] and sorted(row.tolist()) == pytest.approx([math.log(1e-300), math.log(2e-300)], rel=1e-6)
