"""The compiled CPU scan (``kernel="mamba_cpu"``) against a step-by-step reference, its reads
against the positions each query may see, and its set-up: the variable, a missing compiler."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_core.errors import SettingError, UnavailableError
from canvas_plugin_mamba import chunked, cpu_kernel, cpu_ops
from canvas_plugin_mamba.module import MambaAttention
from canvas_plugin_mamba.scan import selective_states


@pytest.fixture(scope="module")
def compiled():
    if not cpu_kernel.available():
        pytest.skip(f"the compiled CPU scan is unavailable here: {cpu_kernel.unavailable_reason()}")


def step_reference(u, delta, A, B, C, read):
    """``y_q = C_q . h_{read_q}`` from the plugin's step-by-step recurrence
    (``selective_states(chunk=1)``, autograd through it); ``read < 0`` gives 0."""
    states = selective_states(u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), chunk=1)
    picked = states[:, read.clamp(min=0)]  # (Bt, Q, E, N)
    return (picked * C[:, :, None, :]).sum(-1) * (read >= 0).view(1, -1, 1).to(u.dtype)


def _inputs(Bt, L, E, N, Q, seed, dtype=torch.float64, delta_scale=0.5):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(Bt, L, E, generator=g, dtype=dtype)
    delta = torch.rand(Bt, L, E, generator=g, dtype=dtype) * delta_scale
    A = -torch.rand(E, N, generator=g, dtype=dtype) * 3 - 0.05
    B = torch.randn(Bt, L, N, generator=g, dtype=dtype)
    C = torch.randn(Bt, Q, N, generator=g, dtype=dtype)
    read = torch.randint(-1, L, (Q,), generator=g)
    return [t.requires_grad_() for t in (u, delta, A, B, C)], read


@settings(max_examples=60, deadline=None)
@given(Bt=st.integers(1, 3), L=st.integers(1, 50), E=st.integers(1, 37), N=st.integers(1, 20),
       Q=st.integers(1, 24), chunk=st.integers(1, 17), seed=st.integers(0, 10**6))
def test_compiled_scan_equals_step_reference(compiled, Bt, L, E, N, Q, chunk, seed):
    """float64: values and all five gradients to rounding, on random sizes (channels not a multiple
    of 16, reads repeated, unsorted, -1, every chunk length)."""
    x, read = _inputs(Bt, L, E, N, Q, seed)
    y = chunked.selective_scan_read(*x, read, chunk=chunk, kernel="cpu")
    ref = step_reference(*x, read)
    torch.testing.assert_close(y, ref, atol=1e-11, rtol=1e-9)
    gy = torch.randn_like(ref)
    grads = (torch.autograd.grad(o, x, gy, allow_unused=True, materialize_grads=True) for o in (y, ref))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("delta_scale", [0.0, 0.3, 400.0])
def test_float32_matches_float64_reference(compiled, delta_scale):
    """float32 (the polynomial exp2) within float32 accuracy of the exact recurrence, from no decay
    (delta = 0) to decays that flush to zero; nothing non-finite."""
    x, read = _inputs(2, 70, 40, 16, 30, seed=3, dtype=torch.float64, delta_scale=delta_scale)
    ref = step_reference(*x, read)
    x32 = [t.detach().float().requires_grad_() for t in x]
    y = chunked.selective_scan_read(*x32, read, kernel="cpu")
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), ref, atol=2e-4 * (1 + ref.abs().max().item()), rtol=1e-4)
    gy = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(y, x32, gy.float()), torch.autograd.grad(ref, x, gy)):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, atol=2e-3 * (1 + b.abs().max().item()), rtol=1e-3)


def test_each_read_depends_on_its_prefix_only(compiled):
    """Measured by gradients: query q's output depends on u, delta, B at positions <= read[q] (all
    of them), on its own C only, and on nothing when read[q] = -1."""
    x, _ = _inputs(1, 23, 18, 5, 6, seed=7)
    read = torch.tensor([4, -1, 22, 0, 4, 13])
    y = chunked.selective_scan_read(*x, read, kernel="cpu")
    for q, r in enumerate(read.tolist()):
        gu, gd, _, gB, gC = torch.autograd.grad(y[:, q].sum(), x, retain_graph=True)
        reach = torch.zeros(23, dtype=torch.bool)
        reach[: r + 1] = True
        for g in (gu, gd, gB):
            moved = g[0].abs().sum(-1) > 0
            assert torch.equal(moved, reach), (q, r, moved)
        assert torch.equal(gC[0].abs().sum(-1) > 0, torch.arange(6) == q if r >= 0 else torch.zeros(6, dtype=bool))


@pytest.mark.parametrize("d_conv", [4, cpu_kernel.MAX_CONV + 1])  # the conv inside the scan, and beside it
def test_module_kernels_agree(compiled, d_conv):
    """A float32 module with the compiled scan and with the PyTorch scan: same outputs and
    gradients to float32 rounding; ``kernel_used`` names each."""
    torch.manual_seed(0)
    m = MambaAttention(48, 4, d_conv=d_conv)
    q, kv = torch.randn(3, 20, 48), torch.randn(3, 90, 48)
    results = {}
    for kernel in ("mamba_cpu", "mamba_torch"):
        m.kernel = kernel
        m.zero_grad()
        out = m(q, kv, kv)
        assert m.kernel_used == kernel
        out.square().sum().backward()
        results[kernel] = [out.detach()] + [p.grad.clone() for p in m.parameters()]
    for a, b in zip(results["mamba_cpu"], results["mamba_torch"]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_setting_off_uses_the_pytorch_scan(fresh_state):
    fresh_state.setenv(cpu_kernel.ENV, "0")
    m = MambaAttention(16, 2)
    q = torch.randn(1, 5, 16)
    m(q, q, q)
    assert m.kernel_used == "mamba_torch"
    m.kernel = "mamba_cpu"
    with pytest.raises(UnavailableError, match=f"{cpu_kernel.ENV}=0"):
        m(q, q, q)


def test_bad_setting_names_the_variable(fresh_state):
    fresh_state.setenv(cpu_kernel.ENV, "sometimes")
    with pytest.raises(SettingError, match=f"{cpu_kernel.ENV}=.sometimes'.*auto.*0.*1"):
        MambaAttention(16, 2)(torch.randn(1, 3, 16), torch.randn(1, 3, 16), torch.randn(1, 3, 16))


def test_missing_compiler_falls_back_with_one_warning(fresh_state, tmp_path):
    """No compiler (and no cached build): a warning naming the problem (once), the PyTorch scan,
    the same results; a module asking for the compiled scan gets an error with the same reason."""
    fresh_state.setenv("CXX", "/nonexistent/c++")
    fresh_state.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    torch.manual_seed(1)
    m = MambaAttention(16, 2)
    q = torch.randn(2, 7, 16)
    with pytest.warns(cpu_kernel.MambaKernelBuildWarning, match="no C\\+\\+ compiler"):
        out = m(q, q, q)
    assert m.kernel_used == "mamba_torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        m(q, q, q)
    m.kernel = "mamba_torch"
    assert torch.equal(out, m(q, q, q))
    m.kernel = "mamba_cpu"
    with pytest.raises(UnavailableError, match="no C\\+\\+ compiler"):
        m(q, q, q)


def test_build_warning_names_the_callers_line(fresh_state):
    """A failed build's warning points at this file's line that called the module or compiled
    the program, not at canvas-core's, torch's or the plugin's code in between."""
    import sys

    from canvas_core import CanvasLayout, CanvasSchema, CanvasTopology, Connection
    from canvas_core.compiler import ProgramCompiler

    fresh_state.setattr(cpu_kernel.KERNEL, "static_problem", lambda: None)
    fresh_state.setattr(cpu_kernel.KERNEL, "_build", lambda: "building scan_cpu.cpp with c++ failed (simulated)")
    m, q = MambaAttention(16, 2), torch.randn(1, 5, 16)
    layout = CanvasLayout(T=2, H=2, W=2, d_model=16, regions={"a": (0, 2, 0, 2, 0, 2)})
    schema = CanvasSchema(layout=layout, topology=CanvasTopology(connections=[Connection("a", "a", fn="mamba")]))
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        line = sys._getframe().f_lineno + 1
        m(q, q, q)
    cpu_kernel.KERNEL.reset()
    with warnings.catch_warnings(record=True) as got_compile:
        warnings.simplefilter("always")
        line_compile = sys._getframe().f_lineno + 1
        ProgramCompiler(schema).compile(device="cpu")
    for warned, at in ((got, line), (got_compile, line_compile)):
        (w,) = [w for w in warned if issubclass(w.category, cpu_kernel.MambaKernelBuildWarning)]
        assert (w.filename, w.lineno) == (__file__, at)


def test_kernel_check_reports_without_building(fresh_state):
    """The registry's availability check for ``mamba_cpu`` names the setting without a build."""
    from canvas_plugin_mamba.plugin import _cpu_kernel_problems

    fresh_state.setenv(cpu_kernel.ENV, "off")
    assert _cpu_kernel_problems(None) == [f"turned off by {cpu_kernel.ENV}=0"]
    assert "reason" not in cpu_kernel.KERNEL._state  # nothing was built or loaded


def test_failed_build_resolves_programs_to_the_pytorch_scan(fresh_state):
    """A compiler that is there but fails: the kernel check reports the failure, so a compiled
    program resolves ``mamba`` to the PyTorch scan and runs (it never meets the failure later)."""
    from canvas_core import CanvasAttention, CanvasLayout, CanvasSchema, CanvasTopology, Connection
    from canvas_core.compiler import ProgramCompiler

    fresh_state.setattr(cpu_kernel.KERNEL, "static_problem", lambda: None)  # a compiler and ninja, as far as is known
    fresh_state.setattr(cpu_kernel.KERNEL, "_build", lambda: "building scan_cpu.cpp with c++ failed (simulated)")
    layout = CanvasLayout(T=2, H=2, W=2, d_model=16, regions={"a": (0, 2, 0, 2, 0, 2)})
    schema = CanvasSchema(layout=layout, topology=CanvasTopology(connections=[Connection("a", "a", fn="mamba")]))
    with pytest.warns(cpu_kernel.MambaKernelBuildWarning, match="simulated"):
        compiled = ProgramCompiler(schema).compile(device="cpu")
    (res,) = [r for r in compiled.resolutions.values() if r.requested == "mamba"]
    assert res.kernel == "mamba_torch"
    assert any("simulated" in r for name, reasons in res.rejected if name == "mamba_cpu" for r in reasons)
    layer = CanvasAttention(compiled.plan, d_model=16, n_heads=2)
    assert torch.isfinite(layer(torch.randn(1, compiled.plan.n, 16))).all()
    assert layer.fn_modules["mamba"].kernel_used == "mamba_torch"


@settings(max_examples=40, deadline=None)
@given(Bt=st.integers(1, 3), L=st.integers(1, 40), E=st.integers(1, 37), K=st.integers(1, 6),
       seed=st.integers(0, 10**6))
def test_compiled_conv_silu_equals_the_pytorch_ops(compiled, Bt, L, E, K, seed):
    """``conv_silu`` against ``silu(causal_depthwise_conv(...))`` in float64: values and the three
    gradients, every kernel width, sequences shorter than the kernel included."""
    import torch.nn.functional as F

    from canvas_plugin_mamba.conv_op import causal_depthwise_conv

    g = torch.Generator().manual_seed(seed)
    x, w, b = (torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_() for s in ((Bt, L, E), (E, K), (E,)))
    out = cpu_ops.conv_silu(x, w, b)
    ref = F.silu(causal_depthwise_conv(x, w, b))
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    gy = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad(out, (x, w, b), gy), torch.autograd.grad(ref, (x, w, b), gy)):
        torch.testing.assert_close(a, r, atol=1e-11, rtol=1e-9)


def test_float32_conv_silu_on_large_inputs(compiled):
    """float32 (the polynomial exp): within float32 rounding of the PyTorch ops, from inputs where
    SiLU is 0 to where it is the identity."""
    import torch.nn.functional as F

    from canvas_plugin_mamba.conv_op import causal_depthwise_conv

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 50, 20, generator=g) * 40).requires_grad_()
    w, b = torch.randn(20, 4, generator=g, requires_grad=True), torch.randn(20, generator=g, requires_grad=True)
    out, ref = cpu_ops.conv_silu(x, w, b), F.silu(causal_depthwise_conv(x, w, b))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)
    gy = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad(out, (x, w, b), gy), torch.autograd.grad(ref, (x, w, b), gy)):
        torch.testing.assert_close(a, r, atol=1e-3, rtol=1e-4)


@settings(max_examples=40, deadline=None)
@given(Bt=st.integers(1, 2), L=st.integers(1, 40), E=st.integers(1, 35), N=st.integers(1, 17),
       Q=st.integers(1, 20), T=st.integers(1, 12), seed=st.integers(0, 10**6))
def test_scan_with_softplus_and_skip_equals_reference(compiled, Bt, L, E, N, Q, T, seed):
    """The eager module's operator (``delta = softplus(dt)`` and ``D u`` at the reads inside the
    kernel) against the step reference plus the skip term, float64, values and six gradients."""
    (u, dt, A, B, C), read = _inputs(Bt, L, E, N, Q, seed)
    with torch.no_grad():
        dt.sub_(0.3).mul_(4)  # both signs: softplus's two branches
    D = torch.randn(E, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).requires_grad_()
    out = cpu_ops.scan_read_softplus(u, dt, A, B, C, D, read, T)
    _same_values_and_gradients(out, _softplus_skip_reference(u, dt, A, B, C, D, read), (u, dt, A, B, C, D))


def _softplus_skip_reference(u, dt, A, B, C, D, read):
    """The step reference with ``delta = softplus(dt)`` plus the skip term ``D u`` at the reads."""
    import torch.nn.functional as F

    ok = (read >= 0).view(1, -1, 1).to(u.dtype)
    return step_reference(u, F.softplus(dt), A, B, C, read) + D * u[:, read.clamp(min=0)] * ok


def _same_values_and_gradients(out, ref, leaves):
    torch.testing.assert_close(out, ref, atol=1e-11, rtol=1e-9)
    gy = torch.randn_like(ref)
    grads = (torch.autograd.grad(o, leaves, gy, allow_unused=True, materialize_grads=True) for o in (out, ref))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@settings(max_examples=40, deadline=None)
@given(Bt=st.integers(1, 2), L=st.integers(1, 30), E=st.integers(1, 35), N=st.integers(1, 9),
       Q=st.integers(1, 12), K=st.integers(1, cpu_kernel.MAX_CONV), T=st.integers(1, 9), sliced=st.booleans(),
       seed=st.integers(0, 10**6))
def test_conv_inside_the_scan_equals_conv_then_scan_reference(compiled, Bt, L, E, N, Q, K, T, sliced, seed):
    """``conv_scan_read_softplus`` (the conv and its SiLU computed as the scan steps, their
    gradients as it walks back) against ``silu(causal_depthwise_conv)`` then the step reference
    plus the skip term, float64: values and all eight gradients; conv widths 1 to MAX_CONV,
    sequences shorter than the conv, reads of -1, repeated and unsorted, ``x`` contiguous or a
    slice of a wider tensor (as the module's shared projection hands it)."""
    import torch.nn.functional as F

    from canvas_plugin_mamba.conv_op import causal_depthwise_conv

    (x, dt, A, B, C), read = _inputs(Bt, L, E, N, Q, seed)
    g = torch.Generator().manual_seed(seed + 1)
    w, cb, D = (torch.randn(*s, dtype=torch.float64, generator=g).requires_grad_() for s in ((E, K), (E,), (E,)))
    with torch.no_grad():
        dt.sub_(0.3).mul_(4)
    leaf = x
    if sliced:  # columns 2 .. E + 2 of a (Bt, L, E + 5) tensor: rows E + 5 apart
        leaf = torch.randn(Bt, L, E + 5, dtype=torch.float64, generator=g).requires_grad_()
        x = leaf[..., 2:E + 2]
    leaves = (leaf, w, cb, dt, A, B, C, D)
    out = cpu_ops.conv_scan_read_softplus(x, w, cb, dt, A, B, C, D, read, T)
    ref = _softplus_skip_reference(F.silu(causal_depthwise_conv(x, w, cb)), dt, A, B, C, D, read)
    _same_values_and_gradients(out, ref, leaves)


def test_compiled_kernel_operators_pass_torch_opcheck(compiled):
    """The eager CPU path's operators: fake shapes, autograd registration and schema agree with the
    implementation (what torch.compile relies on when it traces the module op by op)."""
    g = torch.Generator().manual_seed(0)
    (u, dt, A, B, C), read = _inputs(2, 11, 5, 3, 4, seed=1)
    D = torch.randn(5, dtype=torch.float64, generator=g, requires_grad=True)
    torch.library.opcheck(cpu_ops._scan_op, (u, dt, A, B, C, D, read, 4))
    y, hs = cpu_ops._scan_op(u, dt, A, B, C, D, read, 4)
    d = [t.detach() for t in (u, dt, A, B, C, D)]
    torch.library.opcheck(cpu_ops._scan_backward_op, (torch.randn_like(y), *d, read, hs.detach(), 4))
    x, w, b = (torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in ((2, 9, 5), (5, 4), (5,)))
    torch.library.opcheck(cpu_ops._conv_silu_op, (x, w, b))
    torch.library.opcheck(cpu_ops._conv_silu_backward_op, (torch.randn(2, 9, 5, dtype=torch.float64),
                                                          x.detach(), w.detach(), b.detach()))
    (x, dt, A, B, C), read = _inputs(2, 11, 5, 3, 4, seed=2)
    w, cb = torch.randn(5, 4, dtype=torch.float64, requires_grad=True), torch.randn(5, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(cpu_ops._conv_scan_op, (x, w, cb, dt, A, B, C, D, read, 4))
    y, hs = cpu_ops._conv_scan_op(x, w, cb, dt, A, B, C, D, read, 4)
    d = [t.detach() for t in (x, w, cb, dt, A, B, C, D)]
    torch.library.opcheck(cpu_ops._conv_scan_backward_op, (torch.randn_like(y), *d, read, hs.detach(), 4))


def test_module_traced_op_by_op_under_compile_matches_eager(compiled, monkeypatch):
    """With the module traced op by op (what CANVAS_COMPILE_TRACE_TYPES=1 does), the compiled CPU
    path compiles as opaque operators and gives the eager outputs and gradients."""
    from canvas_plugin_mamba import module as mamba_module

    monkeypatch.setattr(mamba_module, "operators_under_compile", lambda: False)
    torch.manual_seed(0)
    m = MambaAttention(16, 2)
    q, kv = torch.randn(2, 6, 16), torch.randn(2, 30, 16)
    eager = m(q, kv, kv)
    ge = torch.autograd.grad(eager.square().sum(), list(m.parameters()))
    torch._dynamo.reset()
    compiled_m = torch.compile(m, backend="aot_eager", fullgraph=True)
    out = compiled_m(q, kv, kv)
    assert m.kernel_used == "mamba_cpu"
    gc = torch.autograd.grad(out.square().sum(), list(m.parameters()))
    torch.testing.assert_close(out, eager)
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b)


def test_shared_keys_values_take_one_product_with_the_same_results(compiled):
    """keys is values: in_proj and x_proj run as one product on the compiled path; the outputs and
    every gradient equal those of separate calls (keys given as a view); a hook on a projection
    turns the shared product off, so the hook runs."""
    torch.manual_seed(3)
    m = MambaAttention(24, 2).double()
    q = torch.randn(2, 5, 24, dtype=torch.float64)
    kv = torch.randn(2, 40, 24, dtype=torch.float64, requires_grad=True)
    results = []
    for keys in (kv, kv.view_as(kv)):
        m.zero_grad()
        out = m(q, keys, kv)
        gkv, = torch.autograd.grad(out.square().sum(), kv, retain_graph=True)
        out.square().sum().backward()
        results.append([out, gkv] + [p.grad.clone() for p in m.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    seen = []
    m.in_proj.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    m(q, kv, kv)
    assert seen == [(2, 40, m.d_inner)]


def test_missing_source_is_named(fresh_state, tmp_path):
    """A package installed without its C++ source says so (and nothing is built)."""
    fresh_state.setattr(cpu_kernel.KERNEL, "source", tmp_path / "scan_cpu.cpp")
    assert "missing from the installed package (reinstall canvas-plugin-mamba)" in cpu_kernel.static_problem()


def test_fused_compile_path_runs_the_compiled_scan_and_matches_eager(compiled):
    """Under torch.compile a default module (kernel='auto' -> the compiled scan) runs as the one
    operator each way that runs the compiled scan with the conv inside (``proj_cpu``), and gives
    the eager outputs and gradients."""
    from canvas_core.testing import recording_backend

    torch.manual_seed(0)
    m = MambaAttention(16, 2)
    q, kv = torch.randn(2, 6, 16), torch.randn(2, 30, 16)
    eager = m(q, kv, kv)
    assert m.kernel_used == "mamba_cpu"
    ge = torch.autograd.grad(eager.square().sum(), list(m.parameters()))
    torch._dynamo.reset()
    seen = []
    out = torch.compile(m, backend=recording_backend(seen), fullgraph=True)(q, kv, kv)
    gc = torch.autograd.grad(out.square().sum(), list(m.parameters()))
    assert "canvas_mamba.cpu_projected.default" in seen and "canvas_mamba.cpu_projected_backward.default" in seen
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-4)
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("kernel", ["auto", "mamba_cpu"])
def test_a_module_compiled_before_any_eager_call_decides_its_kernel_outside_the_trace(kernel, fresh_state):
    """The first call of a mamba module may be a compiled one: deciding (building or loading) the
    compiled scan takes a lock dynamo cannot trace, so it runs for real while tracing; fullgraph
    holds, the compiled scan runs, and the values are the eager ones."""
    from canvas_core.testing import recording_backend

    if cpu_kernel.static_problem() is not None:
        pytest.skip(f"the compiled CPU scan cannot be built here: {cpu_kernel.static_problem()}")
    assert "reason" not in cpu_kernel.KERNEL._state  # undecided: as in a fresh process
    torch.manual_seed(0)
    m = MambaAttention(16, 2, kernel=kernel)
    q, kv = torch.randn(2, 6, 16), torch.randn(2, 30, 16)
    torch._dynamo.reset()
    seen = []
    out = torch.compile(m, backend=recording_backend(seen), fullgraph=True)(q, kv, kv)
    assert cpu_kernel.KERNEL._state.get("reason", "undecided") is None
    assert "canvas_mamba.cpu_projected.default" in seen
    torch.testing.assert_close(out, m(q, kv, kv))
    assert m.kernel_used == "mamba_cpu"
