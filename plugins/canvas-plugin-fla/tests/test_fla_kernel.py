"""The fla_rwkv kernel: registered lazily, rejected with its reasons off CUDA, exact on CUDA."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import canvas_plugin_fla


def test_registration_is_lazy_and_declares_its_needs():
    calls = []

    class FakeRegistry:
        def add(self, name, factory, **meta):
            calls.append((name, factory, meta))

    canvas_plugin_fla.canvas_register_kernels(FakeRegistry())
    (name, factory, meta), = calls
    assert name == "fla_rwkv" and factory == "canvas_plugin_fla.kernels:FlaWKV"
    assert meta["supports"] == ("rwkv",) and meta["devices"] == ("cuda",) and "fla" in meta["requires"]
    subprocess.run([sys.executable, "-c", "import canvas_plugin_fla, sys; assert 'torch' not in sys.modules"],
                   check=True)


def test_rejected_on_cpu_with_its_reasons():
    plugins = pytest.importorskip("canvas_core.plugins")
    assert "fla_rwkv" in plugins.list_kernels()
    if "rwkv" not in plugins.list_attention_types():
        pytest.skip("the builtin rwkv attention type is not registered yet")
    res = plugins.resolve_attention("rwkv", plugins.RuntimeContext(device="cpu"))
    rejected = dict(res.rejected)
    key = next(k for k in rejected if "fla_rwkv" in k)
    text = " ".join(rejected[key])
    assert "cpu" in text or "cuda" in text.lower()
    assert res.kernel is None or res.kernel.name != "fla_rwkv"


def test_asking_for_the_kernel_on_cpu_is_a_clear_error():
    plugins = pytest.importorskip("canvas_core.plugins")
    if "rwkv" not in plugins.list_attention_types():
        pytest.skip("the builtin rwkv attention type is not registered yet")
    with pytest.raises(plugins.UnavailableError) as info:
        plugins.resolve_attention("rwkv", plugins.RuntimeContext(device="cpu"), kernel="fla_rwkv")
    assert "fla_rwkv" in str(info.value)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (and flash-linear-attention) for fla_rwkv")
def test_matches_the_core_scan_on_cuda():
    pytest.importorskip("fla.ops.rwkv4")
    from canvas_core.extend import wkv_scan
    from canvas_plugin_fla.kernels import FlaWKV

    torch.manual_seed(0)
    B, L, C = 2, 37, 64
    k, v = torch.randn(B, L, C, device="cuda"), torch.randn(B, L, C, device="cuda")
    w, u = torch.rand(C, device="cuda") + 0.05, torch.randn(C, device="cuda") * 0.5
    key_ok = torch.rand(B, L, device="cuda") > 0.2
    key_ok[:, 0] = True
    kern = FlaWKV()
    torch.testing.assert_close(kern(k, v, w, u), wkv_scan(k, v, w, u), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(kern(k, v, w, u, key_ok), wkv_scan(k, v, w, u, key_ok), atol=1e-4, rtol=1e-4)


def _fla_rwkv4_forward(w, u, k, v, state):
    """Line-by-line torch port of the forward of fla's ``fused_recurrent_rwkv4`` (Triton), with
    its calling convention: ``w`` the raw decay parameter (log-decay ``-exp(w)``), ``state``
    ``(B, 3, 1, C)`` (alpha, beta, eps); returns ``(wkv, last state (B, 3, 1, C))``."""
    assert state.dim() == 4 and state.shape[1:3] == (3, 1), state.shape  # fla indexes stride(3)
    assert w.dim() == 1 and u.dim() == 1 and k.dim() == 3 and k.shape == v.shape
    w = -torch.exp(w.float())
    alpha, beta, eps = state[:, 0, 0].clone(), state[:, 1, 0].clone(), state[:, 2, 0].clone()
    outs = []
    for t in range(k.shape[1]):
        kt, vt = k[:, t], v[:, t]
        ukt = u + kt
        tau = torch.maximum(ukt, eps)
        e1a, e2a = torch.exp(eps - tau), torch.exp(ukt - tau)
        outs.append((e1a * alpha + e2a * vt) / (e1a * beta + e2a))
        w_eps = w + eps
        eps = torch.maximum(w_eps, kt)
        e1b, e2b = torch.exp(w_eps - eps), torch.exp(kt - eps)
        alpha = e1b * alpha + e2b * vt
        beta = e1b * beta + e2b
    return torch.stack(outs, 1), torch.stack([alpha, beta, eps], 1)[:, :, None]


@pytest.mark.parametrize("masked", [False, True])
def test_fla_calling_convention_matches_the_core_scan(masked):
    """The wrapper feeds fla's kernel what it expects (raw w, a (B, 3, 1, C) state) and returns
    wkv_scan's output, masked keys and a masked prefix included (checked on CPU against a torch
    port of the kernel; the CUDA test below runs the real one)."""
    from canvas_core.extend import wkv_scan
    from canvas_plugin_fla.kernels import fla_wkv

    g = torch.Generator().manual_seed(3)
    B, L, C = 2, 9, 5
    k, v = torch.randn(B, L, C, generator=g), torch.randn(B, L, C, generator=g)
    w, u = torch.rand(C, generator=g) + 0.05, torch.randn(C, generator=g) * 0.5
    key_ok = None
    if masked:
        key_ok = torch.rand(B, L, generator=g) > 0.3
        key_ok[0, :3] = False  # a masked prefix: zeros until the first allowed key
    out = fla_wkv(_fla_rwkv4_forward, k, v, w, u, key_ok)
    torch.testing.assert_close(out, wkv_scan(k, v, w, u, key_ok), atol=1e-5, rtol=1e-5)
    assert fla_wkv(_fla_rwkv4_forward, k[:, :0], v[:, :0], w, u).shape == (B, 0, C)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_with_masked_keys(dtype):
    """float16 / bfloat16 keys with a key mask: the wrapper used to fill the masked keys with
    -1e38 in the inputs' dtype, which float16 cannot hold (torch raised a RuntimeError); now the
    fill happens in float32 and the result equals wkv_scan on the same (rounded) inputs."""
    from canvas_core.extend import wkv_scan
    from canvas_plugin_fla.kernels import fla_wkv

    g = torch.Generator().manual_seed(5)
    B, L, C = 2, 11, 4
    k, v = torch.randn(B, L, C, generator=g).to(dtype), torch.randn(B, L, C, generator=g).to(dtype)
    w, u = (torch.rand(C, generator=g) + 0.05).to(dtype), (torch.randn(C, generator=g) * 0.5).to(dtype)
    key_ok = torch.rand(B, L, generator=g) > 0.3
    key_ok[1, :2] = False
    out = fla_wkv(_fla_rwkv4_forward, k, v, w, u, key_ok)
    ref = wkv_scan(k.double(), v.double(), w.double(), u.double(), key_ok)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)
