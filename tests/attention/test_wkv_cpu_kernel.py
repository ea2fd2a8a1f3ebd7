"""rwkv's compiled CPU WKV read (canvas_core.attention.wkv_kernel) against the step recurrence,
its use by kernel="auto", its fallback and its environment variable."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_core.attention import wkv_kernel as wk
from canvas_core.attention.rwkv import RWKVAttention, wkv_scan
from canvas_core.errors import SettingError, UnavailableError
from canvas_core.kernels.cpu_build import CpuKernelBuildWarning


@pytest.fixture(scope="module")
def kernel():
    """The built kernel (skips where this machine cannot build it: no compiler or ninja)."""
    if wk.KERNEL.static_problem() is not None or not wk.KERNEL.available():
        pytest.skip(f"the compiled WKV read cannot be built here: {wk.KERNEL.unavailable_reason()}")
    return wk.KERNEL


@pytest.fixture
def fresh_state(monkeypatch):
    """KERNEL's setting and build outcome forgotten for the test, restored after it."""
    saved = dict(wk.KERNEL._state)
    wk.KERNEL.reset()
    yield wk.KERNEL
    wk.KERNEL._state.clear()
    wk.KERNEL._state.update(saved)


def _reference(k, v, w, u, read, key_ok):
    """wkv_read by the step recurrence: the scan at every position, read at ``read`` (0 at -1)."""
    full = wkv_scan(k, v, w.clamp(max=wk.W_MAX), u, key_ok, chunk=1)
    return full[:, read.clamp(min=0)] * (read >= 0).view(1, -1, 1).to(k.dtype)


def _inputs(B, L, C, dtype, seed, w_scale=1.0, u_scale=1.0, k_scale=3.0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, L, C, generator=g, dtype=dtype) * k_scale
    v = torch.randn(B, L, C, generator=g, dtype=dtype)
    w = torch.rand(C, generator=g, dtype=dtype) * w_scale + 1e-6
    u = torch.randn(C, generator=g, dtype=dtype) * u_scale
    return k, v, w, u


def _compare(k, v, w, u, read, key_ok, tol):
    """Values and the four gradients of the kernel equal the reference's within ``tol``."""
    ins = [t.clone().requires_grad_() for t in (k, v, w, u)]
    ref_ins = [t.clone().requires_grad_() for t in (k, v, w, u)]
    out = wk.wkv_read_cpu(*ins, read, key_ok)
    ref = _reference(*ref_ins, read, key_ok)
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=ref.dtype)
    got = torch.autograd.grad((out * g).sum(), ins)
    want = torch.autograd.grad((ref * g).sum(), ref_ins, allow_unused=True)  # no reads: w unused
    want = [torch.zeros_like(t) if d is None else d for t, d in zip(ref_ins, want)]
    for name, a, b in zip("kvwu", got, want):
        scale = max(1.0, float(b.abs().max()))
        torch.testing.assert_close(a, b, atol=tol * scale, rtol=tol, msg=lambda m, n=name: f"d{n}: {m}")


READS = {
    "every": lambda L: torch.arange(L),
    "unsorted_repeated_minus1": lambda L: torch.tensor([L - 1, -1, 0, L // 2, L - 1, L // 3, -1, 0]),
    "more_reads_than_keys": lambda L: torch.arange(-1, L).repeat(3).flip(0),
    "ends_chunks": lambda L: torch.arange(1, L // 4 + 1) * 4 - 1,
}


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("reads", sorted(READS))
@pytest.mark.parametrize("mask", ["none", "shared", "per_row", "all_masked_row"])
@pytest.mark.parametrize("L", [1, 5, 70])
def test_kernel_equals_step_recurrence(kernel, dtype, tol, reads, mask, L):
    B, C = 3, 21  # channels not a multiple of the 16-lane blocks
    k, v, w, u = _inputs(B, L, C, dtype, seed=L)
    read = READS[reads](L)
    read = read[read < L] if len(read) else read
    g = torch.Generator().manual_seed(7)
    key_ok = {"none": None, "shared": torch.rand(1, L, generator=g) > 0.4,
              "per_row": torch.rand(B, L, generator=g) > 0.4}.get(mask)
    if mask == "all_masked_row":
        key_ok = torch.rand(B, L, generator=g) > 0.3
        key_ok[1] = False
    _compare(k, v, w, u, read, key_ok, tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 3e-5)])
@pytest.mark.parametrize("w_scale,u_scale,k_scale", [(1e-7, 1.0, 3.0), (50.0, 1.0, 3.0), (3e4, 1.0, 3.0),
                                                     (1.0, 40.0, 3.0), (1.0, 1e-4, 3.0), (0.1, 1.0, 60.0)])
def test_extreme_decay_bonus_and_keys(kernel, dtype, tol, w_scale, u_scale, k_scale):
    k, v, w, u = _inputs(2, 90, 17, dtype, seed=3, w_scale=w_scale, u_scale=u_scale, k_scale=k_scale)
    if dtype == torch.float32 and k_scale > 10:  # exponents near 100: one float32 ulp of them is 1e-5 of a weight
        tol = 1e-3
    read = torch.tensor([89, 0, 45, 12, -1, 89, 60])
    _compare(k, v, w, u, read, torch.rand(2, 90, generator=torch.Generator().manual_seed(2)) > 0.2, tol)


def test_gradcheck(kernel):
    k, v, w, u = (t.requires_grad_() for t in _inputs(2, 9, 18, torch.float64, seed=5))
    read = torch.tensor([8, -1, 3, 0, 3])
    key_ok = torch.tensor([[1, 0, 1, 1, 1, 0, 1, 1, 1], [0, 0, 1, 1, 0, 1, 1, 0, 1]], dtype=torch.bool)
    for ok in (None, key_ok):
        assert torch.autograd.gradcheck(lambda k, v, w, u, ok=ok: wk.wkv_read_cpu(k, v, w, u, read, ok), (k, v, w, u))


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), L=st.integers(1, 40), C=st.integers(1, 35), Q=st.integers(1, 50),
       seed=st.integers(0, 10_000), masked=st.booleans(), per_row=st.booleans())
def test_property_matches_reference(B, L, C, Q, seed, masked, per_row):
    if not wk.KERNEL.available():
        pytest.skip("the compiled WKV read cannot be built here")
    k, v, w, u = _inputs(B, L, C, torch.float64, seed, w_scale=3.0)
    g = torch.Generator().manual_seed(seed + 1)
    read = torch.randint(-1, L, (Q,), generator=g)
    key_ok = (torch.rand(B if per_row else 1, L, generator=g) > 0.3) if masked else None
    _compare(k, v, w, u, read, key_ok, 1e-11)


def _module_pair(Nq=12, Nk=36, D=24):
    torch.manual_seed(0)
    m = RWKVAttention(D, 4)
    q, kv = torch.randn(2, Nq, D), torch.randn(2, Nk, D)
    mask = torch.rand(2, Nk) > 0.2
    return m, q, kv, mask


def _run(m, q, kv, mask):
    q, kv = q.clone().requires_grad_(), kv.clone().requires_grad_()
    m.zero_grad(set_to_none=True)
    out = m(q, kv, kv, mask)
    out.square().sum().backward()
    return out.detach(), q.grad, kv.grad, m.time_decay.grad.clone(), m.time_first.grad.clone()


def test_auto_uses_kernel_and_matches_torch_path(kernel):
    m, q, kv, mask = _module_pair()
    fast = _run(m, q, kv, mask)
    assert m.kernel_used == "rwkv_cpu"
    m.kernel = "torch"
    slow = _run(m, q, kv, mask)
    assert m.kernel_used == "torch"
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)


def test_non_finite_keys_take_torch_path(kernel):
    m, q, kv, _ = _module_pair()
    kv = kv.clone()
    kv[0, 5, 0] = float("nan")
    with torch.no_grad():
        m(q, kv, kv)
    assert m.kernel_used == "torch"


def test_fallback_when_build_refused(monkeypatch, fresh_state):
    monkeypatch.setattr(wk.KERNEL, "_build", lambda: "no compiler here (test)")
    m, q, kv, mask = _module_pair()
    with pytest.warns(CpuKernelBuildWarning, match="no compiler here"):
        fell = _run(m, q, kv, mask)
    assert m.kernel_used == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        _run(m, q, kv, mask)
    m.kernel = "torch"
    for a, b in zip(fell, _run(m, q, kv, mask)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_env_zero_means_torch_path(monkeypatch, fresh_state):
    monkeypatch.setenv(wk.ENV, "0")
    monkeypatch.setattr(wk.KERNEL, "_build", lambda: pytest.fail("built although turned off"))
    m, q, kv, mask = _module_pair()
    _run(m, q, kv, mask)
    assert m.kernel_used == "torch"
    assert "CANVAS_RWKV_CPU_KERNEL=0" in wk.KERNEL.static_problem()


def test_env_one_requires_kernel(monkeypatch, fresh_state):
    monkeypatch.setenv(wk.ENV, "1")
    monkeypatch.setattr(wk.KERNEL, "_build", lambda: "no compiler here (test)")
    m, q, kv, mask = _module_pair()
    with pytest.raises(UnavailableError, match="CANVAS_RWKV_CPU_KERNEL.*no compiler here|no compiler here.*CANVAS_RWKV"):
        m(q, kv, kv, mask)


def test_bad_env_value_names_variable(monkeypatch, fresh_state):
    monkeypatch.setenv(wk.ENV, "sometimes")
    m, q, kv, mask = _module_pair()
    with pytest.raises(SettingError, match="CANVAS_RWKV_CPU_KERNEL='sometimes'"):
        m(q, kv, kv, mask)


def test_source_ships_as_package_data():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["canvas_core"]
    assert wk.KERNEL.source.is_file() and "attention/csrc/*.cpp" in data


def test_float64_takes_torch_path_unless_required(kernel, monkeypatch, fresh_state):
    m, q, kv, mask = _module_pair()
    m = m.double()
    q, kv = q.double(), kv.double()
    with torch.no_grad():
        m(q, kv, kv, mask)
    assert m.kernel_used == "torch"  # auto: the float64 read is slower compiled than in PyTorch
    monkeypatch.setenv(wk.ENV, "1")
    wk.KERNEL.reset()
    with torch.no_grad():
        required = m(q, kv, kv, mask)
    assert m.kernel_used == "rwkv_cpu"
    m.kernel = "torch"
    with torch.no_grad():
        torch.testing.assert_close(required, m(q, kv, kv, mask), atol=1e-12, rtol=1e-12)
