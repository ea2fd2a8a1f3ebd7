"""rwkv's compiled CPU read (canvas_core.attention.wkv_kernel): non-finite keys and values found
by the scan itself (no pass over them before it) with the PyTorch path's results, decay rates the
kernel refuses, and where its build warning points."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

from canvas_core.attention import wkv_kernel as wk
from canvas_core.attention.rwkv import RWKVAttention, wkv_scan
from canvas_core.errors import CanvasError, ShapeError, UnavailableError
from canvas_core.kernels.cpu_build import CpuKernelBuildWarning
from tests._autograd import graph_node_names


@pytest.fixture(scope="module")
def kernel():
    """The built kernel (skips where this machine cannot build it: no compiler or ninja)."""
    if wk.KERNEL.static_problem() is not None or not wk.KERNEL.available():
        pytest.skip(f"the compiled WKV read cannot be built here: {wk.KERNEL.unavailable_reason()}")
    return wk.KERNEL


def _small(C=3, L=10):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, L, C, generator=g), torch.randn(1, L, C, generator=g),
            torch.rand(C, generator=g) + 0.1, torch.randn(C, generator=g))


def test_auto_leaves_keys_and_values_to_the_scan(kernel):
    """``usable_for`` no longer sums ``k`` and ``v`` (2% of the read at the 16k link): it answers
    yes for a NaN key, and the scan's own report is the distinct WKVNonFiniteError."""
    k, v, w, u = _small()
    k[0, 4, 1] = float("nan")
    assert wk.usable_for(k, v, w, u)
    err = getattr(wk, "WKVNonFiniteError", None)
    assert err is not None and issubclass(err, UnavailableError) and issubclass(err, CanvasError)
    with pytest.raises(err, match=r"k or v holds NaN or infinite values.*rwkv\.wkv_read"):
        wk.wkv_read_cpu(k, v, w, u, torch.arange(10))
    w[0] = float("inf")
    assert not wk.usable_for(k, v, w, u)  # w and u: still checked before (C values each)


def _module_run(m, q, keys, values, mask):
    """Output, kernel_used, autograd node names and every gradient of one forward + backward."""
    q = q.clone().requires_grad_()
    keys = keys.clone().requires_grad_()
    values = keys if values is None else values.clone().requires_grad_()
    m.zero_grad(set_to_none=True)
    out = m(q, keys, values, mask)
    used, names = m.kernel_used, graph_node_names(out)
    out.square().sum().backward()
    grads = [q.grad, keys.grad] + ([] if values is keys else [values.grad]) + [p.grad for p in m.parameters()]
    return out.detach(), used, names, grads


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit, NaN where the other is NaN."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("where", ["keys", "values", "shared", "masked_key"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("Nq", [12, 3])
def test_non_finite_keys_or_values_give_the_pytorch_paths_results(kernel, where, value, Nq):
    """The scan meets the bad number, raises, and the module runs the PyTorch path: values and
    gradients equal bit for bit to ``kernel="torch"``, kernel_used says "torch", no node of the
    compiled read in the graph; the next finite call takes the kernel again."""
    torch.manual_seed(0)
    m = RWKVAttention(24, 4)
    q, keys, values = torch.randn(2, Nq, 24), torch.randn(2, 36, 24), torch.randn(2, 36, 24)
    mask = torch.ones(2, 36, dtype=torch.bool)
    mask[0, 3] = False
    (values if where == "values" else keys)[1, 7 if where != "masked_key" else 3, 5] = value
    if where == "masked_key":
        mask[1, 3] = False
    values = None if where == "shared" else values
    first = _module_run(m, q, keys, values, mask)
    assert first[1] == "torch" and not any("WKVRead" in n for n in first[2]), first[2]
    m.kernel = "torch"
    want = _module_run(m, q, keys, values, mask)
    assert _same(first[0], want[0])
    assert all(_same(a, b) for a, b in zip(first[3], want[3]))
    m.kernel = "auto"
    clean = _module_run(m, q, torch.randn(2, 36, 24), None, mask)
    assert clean[1] == "rwkv_cpu" and any("WKVRead" in n for n in clean[2])


def test_kernel_used_is_not_left_from_an_earlier_call(kernel):
    """A module that ran the kernel, then meets a NaN value: kernel_used is "torch" for that call."""
    m = RWKVAttention(16, 4)
    q, kv = torch.randn(1, 8, 16), torch.randn(1, 8, 16)
    with torch.no_grad():
        m(q, kv, kv)
        assert m.kernel_used == "rwkv_cpu"
        kv[0, 2, 0] = float("nan")
        assert torch.isnan(m(q, kv, kv)).any() and m.kernel_used == "torch"


@pytest.mark.parametrize("bad", [-1e-3, -5.0, -1e30])
def test_negative_decay_refused_naming_w(kernel, bad):
    """w = exp(time_decay) >= 0 in rwkv; the compiled backward loses its accuracy for large
    negative rates (dk, dv off by 1e-2 .. 1 at w = -1e30), so any negative one is refused."""
    k, v, w, u = _small()
    w[1] = bad
    with pytest.raises(ShapeError, match=r"^wkv_read_cpu: w holds negative decay rates .*exp\(time_decay\)"):
        wk.wkv_read_cpu(k, v, w, u, torch.arange(10))
    assert not wk.usable_for(k, v, w, u)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_zero_decay_is_read_exactly(kernel, dtype, tol):
    """w = 0 (no decay; exp(time_decay) underflows to it, -0.0 included) is in the kernel's range:
    values and gradients equal the step recurrence's."""
    k, v, w, u = (t.to(dtype) for t in _small(C=4, L=40))
    w = torch.tensor([0.0, -0.0, 0.3, 0.0], dtype=dtype)
    ins = [t.clone().requires_grad_() for t in (k, v, w, u)]
    ref_ins = [t.clone().requires_grad_() for t in (k, v, w, u)]
    out, ref = wk.wkv_read_cpu(*ins, torch.arange(40)), wkv_scan(*ref_ins, chunk=1)
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    gy = torch.randn(ref.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    for a, b in zip(torch.autograd.grad((out * gy).sum(), ins), torch.autograd.grad((ref * gy).sum(), ref_ins)):
        torch.testing.assert_close(a, b, atol=tol * max(1.0, float(b.abs().max())), rtol=tol)


def test_module_whose_decay_underflows_takes_the_kernel(kernel):
    """A float32 time_decay of -200 gives w = 0 exactly: still the compiled read, as the PyTorch one."""
    m = RWKVAttention(16, 4)
    with torch.no_grad():
        m.time_decay[::2] = -200.0
    q, kv = torch.randn(2, 6, 16), torch.randn(2, 12, 16)
    with torch.no_grad():
        fast = m(q, kv, kv)
        assert m.kernel_used == "rwkv_cpu"
        m.kernel = "torch"
        torch.testing.assert_close(fast, m(q, kv, kv), atol=2e-5, rtol=2e-5)


@pytest.fixture
def fresh_state():
    """KERNEL's setting and build outcome forgotten for the test, restored after it."""
    saved = dict(wk.KERNEL._state)
    wk.KERNEL.reset()
    yield wk.KERNEL
    wk.KERNEL._state.clear()
    wk.KERNEL._state.update(saved)


def test_build_warning_points_at_the_callers_line(monkeypatch, fresh_state):
    """The warning of a failed build names the line that called the module (this file), not
    canvas-core's or torch's code between it and the build."""
    monkeypatch.setattr(wk.KERNEL, "_build", lambda: "no compiler here (test)")
    m = RWKVAttention(16, 4)
    x = torch.randn(1, 4, 16)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        line = sys._getframe().f_lineno + 1
        m(x, x, x)
    (w,) = [w for w in got if issubclass(w.category, CpuKernelBuildWarning)]
    assert (w.filename, w.lineno) == (__file__, line)
