"""Mamba's kernels under conditions a user can set up around them: autocast, an explicit kernel
with a state size it cannot hold, several threads."""

from __future__ import annotations

import pytest
import torch

from canvas_plugin_mamba import cpu_kernel
from canvas_plugin_mamba.module import MambaAttention


@pytest.mark.parametrize("kernel", ["mamba_torch", "auto"])
@pytest.mark.parametrize("Nq", [7, 3])
def test_autocast_bf16_runs_the_scan_in_float32(kernel, Nq):
    """Under CPU bf16 autocast the scan still computes in float32 (its matmuls are not cast), so
    forward and backward run and stay near the float32 module's results."""
    torch.manual_seed(0)
    m = MambaAttention(8, 4, kernel=kernel)
    q, k, v = (torch.randn(2, n, 8, requires_grad=True) for n in (Nq, 7, 7))
    ref = m(q, k, v)
    (gq_ref,) = torch.autograd.grad(ref.sum(), q)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(q, k, v)
        (gq,) = torch.autograd.grad(out.float().sum(), q)
    assert torch.allclose(out.float(), ref, atol=3e-2, rtol=3e-2)
    assert torch.allclose(gq, gq_ref, atol=5e-2, rtol=5e-2)


def test_explicit_cpu_kernel_with_too_large_a_state_names_the_fix():
    """``kernel='mamba_cpu'`` with ``d_state`` above what the compiled scan holds: a canvas error
    naming the limit and the other kernels (it was the C++ check's RuntimeError)."""
    from canvas_core.errors import UnavailableError
    from canvas_plugin_mamba.chunked import selective_scan_read

    N = cpu_kernel.MAX_STATE + 1
    m = MambaAttention(8, 4, d_state=N, kernel="mamba_cpu")
    q = torch.randn(1, 3, 8)
    with pytest.raises(UnavailableError, match=f"d_state={N}.*mamba_torch"):
        m(q, q, q)
    u = torch.randn(1, 3, 4)
    with pytest.raises(UnavailableError, match=f"{N} columns"):
        selective_scan_read(u, u.abs(), -torch.ones(4, N), torch.randn(1, 3, N), torch.randn(1, 3, N),
                            torch.arange(3), kernel="cpu")
    m.kernel = "auto"
    assert m(q, q, q).shape == q.shape and m.kernel_used == "mamba_torch"
