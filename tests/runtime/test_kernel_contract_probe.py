"""A canvas layer checks its ``kernel=`` argument when it is built.

The value's type, a dict's keys, a registered kernel's ``supports`` and one small call of each
chosen kernel (shape, dtype, the ``scale=`` keyword, finite output) are checked at construction,
so a broken kernel is refused by name there instead of failing (or writing NaN) at forward.
"""

import pytest
import torch

import canvas_core.plugins as P
from canvas_core import AttentionDispatcher, CanvasAttention, CanvasLayout, CanvasTopology, Connection
from canvas_core.errors import (AttentionContractError, CanvasError, CanvasTypeError, CompileError, PluginError,
                                SchemaError)
from canvas_core.extend import AttentionKernel
from canvas_core.plugins import PluginHost, use_host
from canvas_core.runtime import canvas_attention as ca_module
from canvas_core.runtime.kernels import ReferenceKernel

torch.set_num_threads(1)

LAYOUT = CanvasLayout(T=2, H=4, W=4, d_model=16, regions={"a": (0, 2, 0, 2, 0, 4), "b": (0, 2, 2, 4, 0, 4)})
TOPO = CanvasTopology(connections=[Connection("a", "a"), Connection("b", "b")])


class WrongShape(AttentionKernel):
    def forward(self, q, k, v, *, scale=None, dropout_p=0.0):
        return q[:, :, :-1]


class WrongDtype(AttentionKernel):
    def forward(self, q, k, v, *, scale=None, dropout_p=0.0):
        return v.double()


class NoScale(AttentionKernel):
    def forward(self, q, k, v):
        return v


class NaNs(AttentionKernel):
    def forward(self, q, k, v, *, scale=None, dropout_p=0.0):
        return v * float("nan")


class Raises(AttentionKernel):
    def forward(self, q, k, v, *, scale=None, dropout_p=0.0):
        raise RuntimeError("kaboom inside the kernel")


class Good(ReferenceKernel):
    """The reference math under another name: passes every check."""


def returns_none(group, plan, **kw):
    return None


@pytest.fixture
def host():
    with use_host(PluginHost(entry_points=lambda: [])):
        yield


def _layer(kernel, topo=TOPO, cls=CanvasAttention, **kw):
    if cls is AttentionDispatcher:
        return cls(topo, LAYOUT, 16, n_heads=2, kernel=kernel, **kw)
    return cls(topo, LAYOUT, d_model=16, n_heads=2, kernel=kernel, **kw)


# --- the probe call ---------------------------------------------------------------------------
@pytest.mark.parametrize("kernel, problem", [
    (WrongShape, "returned shape"),
    (WrongDtype, "torch.float64"),
    (NoScale, "scale"),
    (NaNs, "NaN"),
    (returns_none, "not an nn.Module"),
])
def test_broken_kernel_class_is_refused_at_build_by_name(kernel, problem):
    with pytest.raises(AttentionContractError) as info:
        _layer(kernel)
    msg = str(info.value)
    assert kernel.__name__ in msg and "'cross_attention'" in msg and problem in msg
    assert "CanvasAttention" in msg and "check_kernel" in msg and len(msg) < 500


@pytest.mark.parametrize("kernel", [WrongShape, NoScale, NaNs, returns_none])
def test_broken_registered_kernel_is_refused_naming_it_and_its_provider(host, kernel):
    P.register_kernel("broken_k", kernel, supports=("cross_attention",))
    with pytest.raises(AttentionContractError) as info:
        _layer("broken_k")
    msg = str(info.value)
    assert "kernel 'broken_k' (<in-process>" in msg and "check_kernel('broken_k')" in msg
    with pytest.raises(AttentionContractError, match="broken_k"):  # one per type in a dict as well
        _layer({"cross_attention": "broken_k"})


def test_the_dispatcher_probes_too():
    with pytest.raises(AttentionContractError, match="AttentionDispatcher: kernel 'NaNs'"):
        _layer(NaNs, cls=AttentionDispatcher)


def test_factory_error_is_prefixed_with_kernel_and_type(host):
    def needs_more(group, plan, *, n_heads, head_dim, special):
        return Good(group, plan, n_heads=n_heads, head_dim=head_dim)

    P.register_kernel("needs_more", needs_more, supports=("cross_attention",))
    with pytest.raises(PluginError) as info:
        _layer("needs_more")
    assert str(info.value).startswith("CanvasAttention: kernel 'needs_more'")
    assert "fn type 'cross_attention'" in str(info.value)


def test_a_factory_failing_on_every_plan_raises_its_own_error_at_build():
    def bad_factory(group, plan, **kw):
        raise ValueError("no such block size")

    with pytest.raises(ValueError, match="no such block size"):
        _layer(bad_factory)


def test_a_kernel_raising_when_called_is_left_to_its_real_call():
    layer = _layer(Raises)  # it might need CUDA or another dtype: not judged on the probe's canvas
    with pytest.raises(RuntimeError, match="kaboom"):
        layer(torch.randn(1, LAYOUT.num_positions, 16))


class Blocks8(ReferenceKernel):
    """Builds only for canvases of a multiple of 8 positions (the probe's has 12)."""

    def __init__(self, group, plan, **kw):
        if plan.n % 8:
            raise ValueError(f"needs N divisible by 8, got {plan.n}")
        super().__init__(group, plan, **kw)


def test_a_kernel_with_size_rules_builds_for_the_layer_it_fits():
    layer = _layer(Blocks8)  # the layout has 32 positions
    out = layer(torch.randn(1, LAYOUT.num_positions, 16))
    assert out.shape == (1, LAYOUT.num_positions, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("kernel", [Good, NaNs])
def test_nothing_is_called_under_a_meta_default_device(kernel):
    with torch.device("meta"):  # deferred initialisation: built on meta, materialised later
        layer = _layer(kernel)
    assert layer.qkv.weight.device.type == "meta"


def test_probe_reads_the_layer_dtype():
    class Float32Only(ReferenceKernel):
        def forward(self, q, k, v, *, scale, dropout_p=0.0):
            return super().forward(q, k, v, scale=scale, dropout_p=dropout_p).float()

    _layer(Float32Only)  # float32 layer: fine
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with pytest.raises(AttentionContractError, match="torch.float32 on cpu for q, k, v .* \\(float64\\)"):
            _layer(Float32Only)
    finally:
        torch.set_default_dtype(old)


def test_probe_kernel_direct():
    from canvas_core.runtime.kernels import probe_kernel

    kw = dict(n_heads=2, head_dim=4, dtype=torch.float32)
    assert probe_kernel(Good, "cross_attention", **kw) is None
    assert probe_kernel(ReferenceKernel, "self_attention", options={"mode": "sparse", "block_size": 2}, **kw) is None
    assert "NaN" in probe_kernel(NaNs, "cross_attention", **kw)
    assert probe_kernel(NaNs, "cross_attention", device="meta", **kw) is None  # nothing to run on


# --- the value and the keys of kernel= ----------------------------------------------------------
@pytest.mark.parametrize("bad, label", [
    (3, "kernel=3 (int)"),
    (True, "kernel=True (bool)"),
    ({"cross_attention": 3}, "kernel['cross_attention']=3 (int)"),
    ({"cross_attention": [Good]}, "kernel['cross_attention']="),
])
def test_a_value_that_is_no_kernel_is_a_type_error(bad, label):
    with pytest.raises(CanvasTypeError) as info:
        _layer(bad)
    assert label in str(info.value) and "registered kernel name" in str(info.value)


def test_a_built_module_is_refused_with_the_fix():
    with pytest.raises(CanvasTypeError, match="built module .*pass its class or a factory"):
        _layer(torch.nn.Linear(2, 2))


def test_misspelt_dict_key_is_refused_naming_the_valid_types():
    with pytest.raises(SchemaError) as info:
        _layer({"cross_atention": "reference"})
    msg = str(info.value)
    assert "'cross_atention'" in msg and "Did you mean 'cross_attention'?" in msg and "['cross_attention']" in msg


def test_dict_key_of_a_type_the_layer_lacks_or_runs_as_a_module():
    with pytest.raises(SchemaError, match="no 'self_attention' connection"):
        _layer({"self_attention": "reference"})
    topo = CanvasTopology(connections=[Connection("a", "a"), Connection("b", "b", fn="linear_attention")])
    with pytest.raises(SchemaError, match="'linear_attention' runs its own module, not a kernel"):
        _layer({"linear_attention": "reference"}, topo=topo)
    with pytest.raises(CanvasTypeError, match="dict key 3 is not a fn type name"):
        _layer({3: "reference"})


def test_valid_dict_and_names_still_build():
    topo = CanvasTopology(connections=[Connection("a", "a"), Connection("b", "b", fn="self_attention")])
    layer = _layer({"cross_attention": Good, "self_attention": "reference"}, topo=topo)
    kinds = {type(k).__name__ for k in layer.executor.kernels.values()}
    assert kinds == {"Good", "ReferenceKernel"}
    assert layer(torch.randn(1, 32, 16)).isfinite().all()
    _layer("reference", kernel_options={"mode": "segments"})
    with pytest.warns(DeprecationWarning):
        _layer("dense")


# --- a kernel's declared supports ---------------------------------------------------------------
def test_kernel_not_supporting_the_type_gets_a_short_message(host):
    P.register_kernel("scan_only", Good, supports=("mamba",))
    for kernel in ("scan_only", {"cross_attention": "scan_only"}):
        with pytest.raises(CompileError) as info:
            _layer(kernel)
        msg = str(info.value)
        assert "kernel 'scan_only' does not support fn type 'cross_attention'" in msg
        assert "(it supports: mamba;" in msg and len(msg) < 400


def test_mamba_torch_on_cross_attention_names_the_mismatch():
    pytest.importorskip("canvas_plugin_mamba")
    with pytest.raises(CompileError) as info:
        _layer("mamba_torch")
    msg = str(info.value)
    assert "'mamba_torch' does not support fn type 'cross_attention'" in msg and "plugin's author" not in msg


def test_a_kernel_declaring_one_softmax_type_runs_the_family(host):
    """``self_attention`` and ``cross_attention`` run the same kernel math: a kernel declaring
    one runs both (``flex`` declares ``cross_attention`` only)."""
    P.register_kernel("cross_only", Good, supports=("cross_attention",))
    topo = CanvasTopology(connections=[Connection("a", "a", fn="self_attention"), Connection("b", "b")])
    layer = _layer("cross_only", topo=topo)
    assert {type(k).__name__ for k in layer.executor.kernels.values()} == {"Good"}


def test_kernel_for_another_device_is_checked_but_not_called_here(host):
    P.register_kernel("gpu_nan", NaNs, supports=("cross_attention",), devices=("cuda",))
    _layer("gpu_nan")  # built on CPU to be moved later: not run here, as before
    P.register_kernel("scan_gpu", Good, supports=("mamba",), devices=("cuda",))
    with pytest.raises(CompileError, match="scan_gpu"):
        _layer("scan_gpu")


# --- no new cost, no new randomness ---------------------------------------------------------------
def test_no_probe_without_an_explicit_kernel(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("probed")

    monkeypatch.setattr(ca_module, "probe_kernel", boom)
    for kernel in (None, "reference", "auto", {"cross_attention": "reference"}):
        _layer(kernel)
    with pytest.raises(AssertionError, match="probed"):
        _layer(Good)


def test_probe_leaves_the_random_state_alone():
    torch.manual_seed(0)
    plain = _layer(None)
    after_plain = torch.rand(3)
    torch.manual_seed(0)
    probed = _layer(Good)
    after_probed = torch.rand(3)
    assert torch.equal(after_plain, after_probed)
    for a, b in zip(plain.parameters(), probed.parameters()):
        assert torch.equal(a, b)
    x = torch.randn(2, 32, 16)
    torch.testing.assert_close(plain(x), probed(x))


def test_every_refusal_is_a_canvas_error():
    for bad in (WrongShape, NoScale, 3, {"nope": "reference"}):
        with pytest.raises(CanvasError):
            _layer(bad)
