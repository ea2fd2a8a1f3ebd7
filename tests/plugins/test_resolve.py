"""resolve_attention: kernels by priority, rejections with reasons, unavailable types, no silent math change."""

from __future__ import annotations

import importlib.util

import pytest

import canvas_core.plugins as P
from canvas_core.errors import CanvasTypeError, UnavailableError, UnknownNameError
from canvas_core.plugins import RuntimeContext, resolve_attention

HAS_CUDA = False
if importlib.util.find_spec("torch") is not None:
    import torch

    HAS_CUDA = torch.cuda.is_available()


class K:
    pass


def test_builtin_softmax_type_gets_reference_kernel(host):
    res = resolve_attention("cross_attention", RuntimeContext())
    assert res.attention.name == "cross_attention" and res.kernel.name == "reference"
    assert res.rejected == () and res.kernel_name == "reference"
    d = res.to_dict()
    assert d["kernel"] == "reference" and d["provider"] == "canvas-core" and d["device"] == "cpu"


def test_type_without_kernel_runs_its_module(host):
    res = resolve_attention("linear_attention")
    assert res.kernel is None and res.rejected == ()


def test_kernels_tried_by_priority_rejections_recorded(host):
    P.register_kernel("fast_cuda", K, supports=("cross_attention",), priority=50, devices=("cuda",))
    P.register_kernel("needs_pkg", K, supports=("cross_attention",), priority=30,
                      requires=("canvas_missing_kernel_pkg",))
    P.register_kernel("half_only", K, supports=("cross_attention",), priority=20, dtypes=("float16",))
    P.register_kernel("vetoed", K, supports=("cross_attention",), priority=10,
                      check=lambda ctx: [] if ctx.head_dim in (None, 64) else [f"head_dim {ctx.head_dim} unsupported"])
    P.register_kernel("cpu_good", K, supports=("cross_attention",), priority=5)
    P.register_kernel("other_type", K, supports=("linear_attention",), priority=100)
    res = resolve_attention("cross_attention", RuntimeContext(device="cpu", dtype="float32", head_dim=16))
    assert res.kernel.name == "cpu_good"
    rejected = dict(res.rejected)
    assert list(rejected) == ["fast_cuda", "needs_pkg", "half_only", "vetoed"]  # priority order
    assert "runs on cuda only, not on cpu" in rejected["fast_cuda"][0]
    assert any("canvas_missing_kernel_pkg" in r for r in rejected["needs_pkg"])
    assert "float16" in rejected["half_only"][0]
    assert rejected["vetoed"] == ("head_dim 16 unsupported",)
    # with head_dim 64 the vetoing kernel is allowed and wins over cpu_good
    assert resolve_attention("cross_attention", RuntimeContext(head_dim=64)).kernel.name == "vetoed"
    # fp16 context: half_only wins
    assert resolve_attention("cross_attention", RuntimeContext(dtype="fp16")).kernel.name == "half_only"


def test_unavailable_type_lists_every_candidate_and_reason(host):
    P.register_attention("needs_missing", K, requires=("canvas_missing_attn_pkg",))
    P.register_kernel("nm_kernel", K, supports=("needs_missing",), devices=("cuda",))
    with pytest.raises(UnavailableError) as ei:
        resolve_attention("needs_missing", RuntimeContext())
    msg = str(ei.value)
    assert "needs_missing" in msg and "canvas_missing_attn_pkg" in msg and "not installed" in msg
    assert "nm_kernel" in msg and "cuda only" in msg
    assert "pip install canvas-missing-attn-pkg" in msg
    assert isinstance(ei.value, RuntimeError)


def test_cuda_only_type_on_cpu(host):
    P.register_attention("cuda_only", K, devices=("cuda",))
    with pytest.raises(UnavailableError, match="runs on cuda only, not on cpu"):
        resolve_attention("cuda_only", RuntimeContext(device="cpu"))


@pytest.mark.skipif(HAS_CUDA, reason="checks the 'no CUDA' reason on a machine without CUDA")
def test_cuda_requested_without_cuda(host):
    P.register_attention("cuda_only2", K, devices=("cuda",))
    with pytest.raises(UnavailableError, match="torch reports no CUDA"):
        resolve_attention("cuda_only2", RuntimeContext(device="cuda:0"))


def test_dtype_and_grad_reasons(host):
    P.register_attention("bf16_only", K, dtypes=("bfloat16",))
    with pytest.raises(UnavailableError, match="supports dtypes bfloat16, not float32"):
        resolve_attention("bf16_only")
    assert resolve_attention("bf16_only", RuntimeContext(dtype="bf16")).attention.name == "bf16_only"
    P.register_attention("fwd_only", K, differentiable=False)
    with pytest.raises(UnavailableError, match="not differentiable"):
        resolve_attention("fwd_only")
    assert resolve_attention("fwd_only", RuntimeContext(requires_grad=False)).kernel is None


def test_broken_check_is_a_reason_not_a_crash(host):
    def bad(ctx):
        raise ZeroDivisionError("oops")

    P.register_attention("badcheck", K, check=bad)
    with pytest.raises(UnavailableError, match="ZeroDivisionError"):
        resolve_attention("badcheck")


def test_explicit_kernel(host):
    P.register_kernel("gpu_k", K, supports=("cross_attention",), devices=("cuda",), priority=9)
    # insisting on a kernel that cannot run is an error, never a silent fallback
    with pytest.raises(UnavailableError) as ei:
        resolve_attention("cross_attention", RuntimeContext(), kernel="gpu_k")
    assert "gpu_k" in str(ei.value) and "cuda only" in str(ei.value)
    assert resolve_attention("cross_attention", kernel="reference").kernel.name == "reference"
    # a kernel that does not execute the type is not used, and that is recorded
    res = resolve_attention("linear_attention", kernel="reference")
    assert res.kernel is None and res.rejected[0][0] == "reference"
    assert "does not support" in res.rejected[0][1][0]
    with pytest.raises(UnknownNameError, match="pip install canvas-backend-flex"):
        resolve_attention("cross_attention", kernel="flex")


def test_insisted_kernel_missing_its_package_names_that_package_only(host):
    # the kernel's own distribution is installed (it registered); only the package it needs is missing
    P.register_kernel("xformers", K, supports=("cross_attention",), requires=("no_such_kernel_pkg_xyz",))
    with pytest.raises(UnavailableError) as ei:
        resolve_attention("cross_attention", kernel="xformers")
    msg = str(ei.value)
    assert "To fix: Install the missing package(s) with pip install no-such-kernel-pkg-xyz." in msg
    assert "canvas-backend-xformers" not in msg and msg.endswith("Or drop kernel= to let canvas-core choose.")


def test_no_runnable_kernel_falls_back_to_module_math(host):
    P.register_attention("custom", K)
    P.register_kernel("custom_cuda", K, supports=("custom",), devices=("cuda",))
    res = resolve_attention("custom")
    assert res.kernel is None and res.rejected[0][0] == "custom_cuda" and "custom_cuda cannot run on cpu/float32; the custom module computes" in res.note
    assert res.fallback


def test_unknown_type(host):
    with pytest.raises(UnknownNameError, match="pip install canvas-plugin-mamba"):
        resolve_attention("mamba")


def test_runtime_context_coercion():
    assert RuntimeContext.coerce(None) == RuntimeContext()
    ctx = RuntimeContext.coerce({"device": "cuda:1", "dtype": "torch.bfloat16"})
    assert ctx.device_type == "cuda" and ctx.dtype_name == "bfloat16"
    assert RuntimeContext.coerce("mps").device_type == "mps"
    with pytest.raises(CanvasTypeError):
        RuntimeContext.coerce(3.5)
