"""rwkv's compiled CPU WKV read: what it refuses (bad ``read``, operands the C++ ops would
follow out of bounds, non-finite inputs) and its float32 accuracy on long, slowly decaying key
sequences against a float64 reference."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from canvas_core.attention import wkv_kernel as wk
from canvas_core.attention.rwkv import wkv_read
from canvas_core.errors import ShapeError, UnavailableError


@pytest.fixture(scope="module")
def kernel():
    """The built kernel (skips where this machine cannot build it: no compiler or ninja)."""
    if wk.KERNEL.static_problem() is not None or not wk.KERNEL.available():
        pytest.skip(f"the compiled WKV read cannot be built here: {wk.KERNEL.unavailable_reason()}")
    return wk.KERNEL


def _small(B=2, L=10, C=5):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(B, L, C, generator=g), torch.randn(B, L, C, generator=g),
            torch.rand(C, generator=g) + 0.1, torch.randn(C, generator=g))


@pytest.mark.parametrize("read", [torch.tensor([1.0, 2.0]), torch.tensor([True, False]), torch.tensor(3)],
                         ids=["float", "bool", "0d"])  # 2-D: in the subprocess below (it aborted the process)
def test_read_must_be_one_d_integer(kernel, read):
    k, v, w, u = _small()
    with pytest.raises(ShapeError, match=r"read must be a 1-D integer"):
        wk.wkv_read_cpu(k, v, w, u, read)


@pytest.mark.parametrize("bad", [10, -2, 2**40])
def test_read_positions_out_of_range(kernel, bad):
    k, v, w, u = _small()
    with pytest.raises(ShapeError, match=r"read holds positions .* outside \[-1, L - 1\] = \[-1, 9\]"):
        wk.wkv_read_cpu(k, v, w, u, torch.tensor([0, bad, 3]))


def test_operand_shapes_named(kernel):
    k, v, w, u = _small()
    with pytest.raises(ShapeError, match=r"w, u \(C,\)"):
        wk.wkv_read_cpu(k, v, w[:3], u, torch.arange(3))
    with pytest.raises(ShapeError, match=r"key_ok must be"):
        wk.wkv_read_cpu(k, v, w, u, torch.arange(3), torch.ones(2, 7, dtype=torch.bool))


# Each call hands the ops operands that index out of bounds or do not match: each must raise
# RuntimeError (TORCH_CHECK), never write out of bounds.  In a subprocess: a crash must not take
# pytest down.  First the reviewer's reproducer: a 2-D read through wkv_read_cpu (ShapeError).
_DIRECT = r"""
import torch
from canvas_core.attention import wkv_kernel as wk
from canvas_core.attention.causal_read import reads_by_position
from canvas_core.errors import ShapeError
k = torch.randn(2, 10, 5)
try:
    wk.wkv_read_cpu(k, k, torch.rand(5) + .1, torch.rand(5), torch.arange(10).view(2, 5))
    print("NO ERROR read_2d", flush=True)
except ShapeError:
    print("raised read_2d", flush=True)
wk.KERNEL.require()
fwd, bwd = torch.ops.canvas_rwkv_cpu.wkv_fwd, torch.ops.canvas_rwkv_cpu.wkv_bwd
B, L, C = 2, 10, 5
k, v, w, u = torch.randn(B, L, C), torch.randn(B, L, C), torch.rand(C) + .1, torch.randn(C)
rs, rq = reads_by_position(torch.arange(L), L)
y, hs = fwd(k, v, w, u, None, rs, rq, L, wk.CHUNK, True)[:2]
gy = torch.ones(B, L, C)
L64 = lambda *x: torch.tensor(x, dtype=torch.long)
bad = {
    "rq_past_Q": lambda: fwd(k, v, w, u, None, rs, rq, 2, wk.CHUNK, False),
    "rq_negative": lambda: fwd(k, v, w, u, None, rs, rq - 1, L, wk.CHUNK, False),
    "Q_negative": lambda: fwd(k, v, w, u, None, rs, rq, -1, wk.CHUNK, False),
    "rs_decreasing": lambda: fwd(k, v, w, u, None, L64(0, 3, 1, 2, 3, 4, 5, 6, 7, 8, 10), rq, L, wk.CHUNK, False),
    "rs_not_from_0": lambda: fwd(k, v, w, u, None, rs + 1, rq, L, wk.CHUNK, False),
    "rs_end_not_len_rq": lambda: fwd(k, v, w, u, None, rs, rq[:4], L, wk.CHUNK, False),
    "rs_huge_step": lambda: fwd(k, v, w, u, None, L64(0, 10**12, *([10] * 9)), rq, L, wk.CHUNK, False),
    "rs_length": lambda: fwd(k, v, w, u, None, rs[:-1], rq, L, wk.CHUNK, False),
    "rs_int32": lambda: fwd(k, v, w, u, None, rs.int(), rq, L, wk.CHUNK, False),
    "v_shape": lambda: fwd(k, v[:, :5], w, u, None, rs, rq, L, wk.CHUNK, False),
    "w_shape": lambda: fwd(k, v, w[:3], u, None, rs, rq, L, wk.CHUNK, False),
    "k_2d": lambda: fwd(k[0], v[0], w, u, None, rs, rq, L, wk.CHUNK, False),
    "k_half": lambda: fwd(k.half(), v.half(), w.half(), u.half(), None, rs, rq, L, wk.CHUNK, False),
    "key_ok_shape": lambda: fwd(k, v, w, u, torch.ones(3, L, dtype=torch.bool), rs, rq, L, wk.CHUNK, False),
    "T_zero": lambda: fwd(k, v, w, u, None, rs, rq, L, 0, False),
    "bwd_gy_fewer_queries": lambda: bwd(gy[:, :3].contiguous(), k, v, w, u, None, rs, rq, hs, wk.CHUNK),
    "bwd_gy_shape": lambda: bwd(gy[:, :, :2].contiguous(), k, v, w, u, None, rs, rq, hs, wk.CHUNK),
    "bwd_hs_size": lambda: bwd(gy, k, v, w, u, None, rs, rq, hs[:-1], wk.CHUNK),
    "bwd_hs_dtype": lambda: bwd(gy, k, v, w, u, None, rs, rq, hs.float(), wk.CHUNK),
    "bwd_rq_past_Q": lambda: bwd(gy[:, :2].contiguous(), k, v, w, u, None, rs, rq, hs, wk.CHUNK),
}
for name, call in bad.items():
    try:
        call()
        print("NO ERROR", name, flush=True)
    except RuntimeError:
        print("raised", name, flush=True)
"""


def test_direct_op_calls_with_bad_operands_raise(kernel):
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_DIRECT)], cwd=root, capture_output=True,
                          text=True, timeout=300)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, f"rc {done.returncode}: {lines[-3:]} {done.stderr[-2000:]}"
    assert len(lines) == 21 and all(x.startswith("raised") for x in lines), lines


@pytest.mark.parametrize("where,value", [("k", float("nan")), ("k", float("inf")), ("k", -float("inf")),
                                         ("v", float("nan")), ("v", float("inf")), ("w", float("nan")),
                                         ("w", float("inf")), ("u", float("nan")), ("u", float("inf")),
                                         ("k_masked", float("nan"))])
def test_non_finite_inputs_refused(kernel, where, value):
    k, v, w, u = _small(B=1, L=10, C=3)
    ins = {"k": k, "v": v, "w": w, "u": u, "k_masked": k}
    if where in ("w", "u"):
        ins[where][0] = value
    else:
        ins[where][0, 4, 0] = value
    key_ok = torch.ones(1, 10, dtype=torch.bool)
    key_ok[0, 4] = where != "k_masked"
    with pytest.raises(UnavailableError, match=r"NaN or infinite .*canvas_core\.attention\.rwkv\.wkv_read"):
        wk.wkv_read_cpu(k, v, w, u, torch.arange(10), key_ok)


def _max_rel(a, b):
    """Largest error relative to the reference's largest magnitude (at least 1)."""
    return float((a.detach().double() - b.detach()).abs().max() / b.detach().abs().max().clamp(min=1))


def _grads(fn, ins, read, gy):
    ins = [t.clone().requires_grad_() for t in ins]
    out = fn(*ins, read)
    return [out, *torch.autograd.grad((out * gy.to(out.dtype)).sum(), ins)]


# L = 20000 keys with slow decays: the float32 errors of an every-step-rescaled float32 recurrence
# were 100-1000x the PyTorch path's (4.7e-4 on dk, 1.1e-3 on dw against 4e-7, 8e-7).
def test_float32_long_slow_decay_matches_float64(kernel):
    g = torch.Generator().manual_seed(2)
    L, C = 20000, 16
    k = torch.randn(1, L, C, generator=g) * 3
    v = torch.randn(1, L, C, generator=g)
    w = torch.exp(torch.empty(C).uniform_(-9, -5, generator=g))
    u = torch.randn(C, generator=g)
    read = torch.arange(L)
    gy = torch.randn(1, L, C, generator=g, dtype=torch.float64)
    ref = _grads(wkv_read, [t.double() for t in (k, v, w, u)], read, gy)
    for name, fn in (("kernel", wk.wkv_read_cpu), ("torch path", wkv_read)):
        got = _grads(fn, (k, v, w, u), read, gy)
        errs = {n: _max_rel(a, b) for n, a, b in zip(["y", "dk", "dv", "dw", "du"], got, ref)}
        assert max(errs.values()) < 3e-6, (name, errs)


def test_float32_long_zero_keys_tiny_decay_forward(kernel):
    """All keys 0 and w from 1e-7: every key moved the old kernel's scale by e^-w, a float32
    factor near 1 whose rounding compounded (errors 1e-4 against the PyTorch path's 1e-6)."""
    g = torch.Generator().manual_seed(3)
    L, C = 20000, 16
    k = torch.zeros(1, L, C)
    v = torch.randn(1, L, C, generator=g) + torch.linspace(-3, 3, L).view(1, L, 1)
    w, u = torch.logspace(-7, -1, C), torch.zeros(C)
    read = torch.arange(L)
    ref = wkv_read(k.double(), v.double(), w.double(), u.double(), read)
    for name, fn in (("kernel", wk.wkv_read_cpu), ("torch path", wkv_read)):
        err = float((fn(k, v, w, u, read).double() - ref).abs().max())
        assert err < 3e-6, (name, err)
