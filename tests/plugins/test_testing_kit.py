"""canvas_core.testing: registered_plugin, the canvas_plugin fixture, conformance suites."""

from __future__ import annotations

import types

import pytest

import canvas_core.plugins as P
from canvas_core.errors import DuplicateRegistrationError
from canvas_core.plugins import hookimpl
from canvas_core.testing import canvas_plugin, check_attention_type, check_kernel, registered_plugin  # noqa: F401,F811

torch = pytest.importorskip("torch")
nn = torch.nn


class GoodAttention(nn.Module):
    """Plain masked softmax attention written for the test (the reference of a correct type)."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.q = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)

    def forward(self, queries, keys, values, key_mask=None):
        B, Nq, _ = queries.shape
        Nk = keys.shape[1]
        logits = self.q(queries) @ keys.transpose(1, 2) / keys.shape[-1] ** 0.5
        allowed = torch.ones(B, Nq, Nk, dtype=torch.bool, device=queries.device)
        if key_mask is not None:
            allowed = allowed & key_mask.expand(B, Nq, Nk)
        logits = logits.masked_fill(~allowed, float("-inf"))
        has = allowed.any(-1, keepdim=True)
        w = torch.softmax(logits.masked_fill(~has, 0.0), -1) * allowed
        return self.o(w @ values) * has


def _variant(**overrides):
    """A subclass of GoodAttention whose forward is post-processed by ``fix(self, out, q, k, v)``."""
    fix = overrides["fix"]

    class Variant(GoodAttention):
        def forward(self, queries, keys, values, key_mask=None):
            return fix(self, super().forward(queries, keys, values, key_mask), queries, keys, values)

    return Variant


def _plugin(name, factory):
    return types.SimpleNamespace(
        canvas_register_attention=hookimpl(lambda registry: registry.add(name, factory, family="Test")))


def test_registered_plugin_registers_and_restores(host):
    plugin = _plugin("kit_type", GoodAttention)
    with registered_plugin(plugin, name="kit", distribution="kit-dist", version="9") as rec:
        assert rec.status == "ok" and "kit_type" in P.list_attention_types()
        assert P.get_attention_spec("kit_type").distribution == "kit-dist"
    assert "kit_type" not in P.list_attention_types()
    assert "kit" not in host.records


def test_registered_plugin_override_restored(host):
    over = types.SimpleNamespace(canvas_register_attention=hookimpl(
        lambda registry: registry.add("pooling", GoodAttention, override=True)))
    with registered_plugin(over, name="over"):
        assert P.get_attention_spec("pooling").factory is GoodAttention
    assert P.get_attention_spec("pooling").distribution == "canvas-core"


def test_registered_plugin_raises_conflicts(host):
    with pytest.raises(DuplicateRegistrationError, match="canvas-core"):
        with registered_plugin(_plugin("cross_attention", GoodAttention), name="clash"):
            pass  # pragma: no cover
    assert "clash" not in host.records


def test_canvas_plugin_fixture(host, canvas_plugin):  # noqa: F811
    rec = canvas_plugin(_plugin("fixture_type", GoodAttention), name="fx")
    assert rec.name == "fx" and "fixture_type" in P.ATTENTION_TYPES


def test_fixture_cleaned_up(host):
    assert "fixture_type" not in P.ATTENTION_TYPES and "fx" not in host.records


def test_good_type_passes_strict(host):
    P.register_attention("good", GoodAttention)
    report = check_attention_type("good", strict=True, grad_inputs=("queries", "keys", "values"))
    assert report.ok and not report.failed
    assert {"shape/dtype/device", "gradients", "batch independence", "empty keys", "one key",
            "fully masked query", "deterministic", "Nq != Nk", "zeros without keys",
            "key_mask respected"} <= set(report.passed)
    # a class works too (before registering it)
    assert check_attention_type(GoodAttention).ok


@pytest.mark.parametrize("prop,fix", [
    ("shape/dtype/device", lambda self, out, q, k, v: out[:, :1]),
    ("shape/dtype/device", lambda self, out, q, k, v: out.double()),
    ("empty keys", lambda self, out, q, k, v: out / torch.tensor(float(k.shape[1])) if k.shape[1] == 0
     else out * 0 + out / 1),
    ("batch independence", lambda self, out, q, k, v: out + v.mean(dim=(0, 1), keepdim=True)),
    ("one key", lambda self, out, q, k, v: out + (torch.nan if k.shape[1] == 1 else 0.0)),
    ("deterministic", lambda self, out, q, k, v: out + torch.tensor(float(id(self) % 997))),
    ("gradients", lambda self, out, q, k, v: out.detach()),
])
def test_suite_catches_broken_types(host, prop, fix):
    P.register_attention("broken", _variant(fix=fix))
    with pytest.raises(AssertionError) as ei:
        check_attention_type("broken")
    msg = str(ei.value)
    assert "'broken'" in msg and f"[{prop}]" in msg
    report = check_attention_type("broken", raise_on_failure=False)
    assert prop in report.failed and not report.ok


def test_suite_catches_nan_on_fully_masked_query(host):
    class NaNMask(GoodAttention):
        def forward(self, queries, keys, values, key_mask=None):
            logits = queries @ keys.transpose(1, 2)
            if key_mask is not None:
                logits = logits.masked_fill(~key_mask, float("-inf"))
            return torch.softmax(logits, -1) @ values  # NaN rows for fully masked queries

    P.register_attention("nanmask", NaNMask)
    report = check_attention_type("nanmask", raise_on_failure=False)
    assert "fully masked query" in report.failed


def test_ignored_mask_fails_by_default(host):
    class IgnoresMask(GoodAttention):
        def forward(self, queries, keys, values, key_mask=None):
            return super().forward(queries, keys, values, None)

    P.register_attention("ignores", IgnoresMask)
    report = check_attention_type("ignores", raise_on_failure=False)  # dependency exactness is default
    assert "key_mask respected" in report.failed and "ignores key_mask" in report.failed["key_mask respected"]
    # called per key set by the runtime (it declares no key_mask_exact), it reads only linked keys
    assert "dependency exactness" in report.passed
    report = check_attention_type("ignores", strict=True, raise_on_failure=False)
    assert "key_mask respected" in report.failed and "zeros without keys" in report.failed


def test_type_without_key_mask_parameter(host):
    class NoMask(nn.Module):
        def __init__(self, d_model, n_heads=4, dropout=0.0):
            super().__init__()
            self.p = nn.Linear(d_model, d_model)

        def forward(self, queries, keys, values):
            w = torch.softmax(queries @ keys.transpose(1, 2), -1)
            return self.p(w @ values)

    P.register_attention("nomask", NoMask)
    report = check_attention_type("nomask", strict=True)  # called per key set, as the runtime does
    assert report.ok and {"fully masked query", "zeros without keys", "key_mask respected",
                          "dependency exactness", "trainable"} <= set(report.passed)
    assert report.details["calling convention"] == "per_key_set"


def test_construct_failure_reported(host):
    def factory(d_model, n_heads=4, dropout=0.0):
        raise RuntimeError("cannot build")

    P.register_attention("nobuild", factory)
    with pytest.raises(AssertionError, match=r"\[construct\].*cannot build"):
        check_attention_type("nobuild")


def test_check_kernel_reference_and_broken(host):
    report = check_kernel("reference")
    assert report.ok and "dense/cross_attention" in report.passed
    from canvas_core.runtime.kernels import ReferenceKernel

    class WrongScale(ReferenceKernel):
        def forward(self, q, k, v, *, scale, dropout_p=0.0):
            return super().forward(q, k, v, scale=scale * 2, dropout_p=dropout_p)

    P.register_kernel("wrong_scale", WrongScale, supports=("cross_attention",))
    with pytest.raises(AssertionError, match="differs from the reference"):
        check_kernel("wrong_scale")


def test_importing_testing_is_light():
    import subprocess
    import sys

    code = "import sys, canvas_core.testing; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registering_an_already_loaded_plugin_says_how(host):
    plugin = _plugin("twice_type", GoodAttention)
    host.register_plugin(plugin, "first-name")
    from canvas_core.errors import PluginError

    with pytest.raises(PluginError, match="already registered as plugin 'first-name'.*isolated_plugins"):
        with registered_plugin(plugin, name="second-name"):
            pass  # pragma: no cover


def test_isolated_plugins_leaves_default_host_alone(host):
    from canvas_core.testing import isolated_plugins

    P.register_attention("outer_only", GoodAttention)
    with isolated_plugins(entry_points=lambda: []) as inner:
        assert inner is P.get_host() and "outer_only" not in P.list_attention_types()
        P.register_attention("inner_only", GoodAttention)
    assert P.get_host() is host
    assert "outer_only" in P.list_attention_types() and "inner_only" not in P.list_attention_types()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to check a type on the GPU")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_suite_on_cuda(host, dtype):
    P.register_attention("good_cuda", GoodAttention)
    report = check_attention_type("good_cuda", device="cuda", dtype=dtype, strict=True)
    assert report.ok
    assert check_attention_type("cross_attention", device="cuda", dtype=dtype, strict=True).ok


def test_recording_backend_sees_the_forward_and_the_backward_graphs():
    import torch

    from canvas_core.testing import recording_backend

    seen = []
    x = torch.randn(3, 4, requires_grad=True)
    out = torch.compile(lambda t: torch.exp(t).sum(), backend=recording_backend(seen), fullgraph=True)(x)
    forward = list(seen)
    out.backward()
    torch.testing.assert_close(x.grad, torch.exp(x.detach()))  # the graphs ran unchanged
    assert "aten.exp.default" in forward and "aten.sum.default" in forward
    assert "aten.mul.Tensor" in seen[len(forward):]  # the backward graph: grad * exp(x)
