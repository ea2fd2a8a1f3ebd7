"""Mamba's kernels under conditions a user can set up around them: autocast, an explicit kernel
with a state size it cannot hold, several threads, a compiler without OpenMP."""

from __future__ import annotations

import shutil

import pytest
import torch

from canvas_plugin_mamba import cpu_kernel
from canvas_plugin_mamba.module import MambaAttention


def _needs_build_tools() -> None:
    """Skips, saying why, where no build could even start (no compiler or no ninja)."""
    if cpu_kernel.KERNEL.compiler() is None or shutil.which("ninja") is None:
        pytest.skip("no C++ compiler or no ninja here")


def _falls_back_with_warning(match: str) -> None:
    """A default module's first call warns once (``MambaKernelBuildWarning`` matching ``match``)
    and runs the PyTorch scan."""
    m = MambaAttention(8, 4)
    q = torch.randn(1, 3, 8)
    with pytest.warns(cpu_kernel.MambaKernelBuildWarning, match=match):
        m(q, q, q)
    assert m.kernel_used == "mamba_torch"


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


def test_too_large_a_state_for_the_compiled_scan():
    """``d_state`` above what the compiled scan holds: ``kernel='mamba_cpu'`` (what a compiled
    program's CPU mamba groups get) runs the PyTorch scan, as ``mamba_ssm`` does for ``Nq != Nk``
    (it raised the C++ check's RuntimeError); ``selective_scan_read(kernel='cpu')`` is a canvas
    error naming the limit."""
    from canvas_core.errors import UnavailableError
    from canvas_plugin_mamba.chunked import selective_scan_read

    if not cpu_kernel.available():
        pytest.skip(f"the compiled CPU scan is unavailable here: {cpu_kernel.unavailable_reason()}")
    N = cpu_kernel.MAX_STATE + 1
    torch.manual_seed(0)
    m = MambaAttention(8, 4, d_state=N, kernel="mamba_cpu")
    q = torch.randn(1, 3, 8)
    out = m(q, q, q)
    assert m.kernel_used == "mamba_torch"
    m.kernel = "mamba_torch"
    assert torch.equal(out, m(q, q, q))
    u = torch.randn(1, 3, 4)
    with pytest.raises(UnavailableError, match=f"{N} columns"):
        selective_scan_read(u, u.abs(), -torch.ones(4, N), torch.randn(1, 3, N), torch.randn(1, 3, N),
                            torch.arange(3), kernel="cpu")


def test_cached_build_is_used_without_a_compiler(fresh_state):
    """A library already built for this source and machine loads without a compiler (a machine
    or image that ships the cache): no warning, the compiled scan."""
    if not cpu_kernel.available():
        pytest.skip(f"the compiled CPU scan is unavailable here: {cpu_kernel.unavailable_reason()}")
    cpu_kernel.KERNEL.reset()
    fresh_state.setenv("CXX", "/nonexistent/c++")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu_kernel.static_problem() is None and cpu_kernel.available()


def test_unwritable_build_folder_names_the_variable(fresh_state, tmp_path):
    """A build folder that cannot be created: one warning naming ``TORCH_EXTENSIONS_DIR``, the
    PyTorch scan."""
    _needs_build_tools()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    fresh_state.setenv("TORCH_EXTENSIONS_DIR", str(blocker / "sub"))
    _falls_back_with_warning("cannot be written.*TORCH_EXTENSIONS_DIR")


def test_required_kernel_error_names_the_variable(fresh_state, tmp_path):
    """``CANVAS_MAMBA_CPU_KERNEL=1`` and no build: the error says to unset the variable (the
    default kernel='auto' is what failed, so 'use kernel=auto' would not help)."""
    from canvas_core.errors import UnavailableError

    fresh_state.setenv(cpu_kernel.ENV, "1")
    fresh_state.setenv("CXX", "/nonexistent/c++")
    fresh_state.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    q = torch.randn(1, 3, 8)
    with pytest.raises(UnavailableError, match=f"no C\\+\\+ compiler.*unset {cpu_kernel.ENV}"):
        MambaAttention(8, 4)(q, q, q)


@pytest.mark.parametrize("kernel", ["auto", "mamba_torch"])
def test_conv_without_bias(kernel):
    """A conv built without a bias (``bias=False``, as Mamba's ``conv_bias=False``) runs in both
    kernels as a zero bias (it raised AttributeError in the conv operator)."""
    torch.manual_seed(0)
    m = MambaAttention(8, 4, kernel=kernel).double()
    ref = MambaAttention(8, 4, kernel=kernel).double()
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        ref.conv1d.bias.zero_()
    m.conv1d = torch.nn.Conv1d(8, 8, 4, groups=8, padding=3, bias=False).double()
    with torch.no_grad():
        m.conv1d.weight.copy_(ref.conv1d.weight)
    q = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    out = m(q, q, q)
    out.sum().backward()
    assert torch.allclose(out, ref(q, q, q), rtol=1e-12, atol=1e-12)


def test_two_threads_give_the_one_thread_results():
    """The compiled kernels split work by batch row and channel block (``at::parallel_for``), so
    the values and every gradient do not depend on the thread count: bit for bit."""
    if not cpu_kernel.available():
        pytest.skip(f"the compiled CPU scan is unavailable here: {cpu_kernel.unavailable_reason()}")
    torch.manual_seed(0)
    m = MambaAttention(40, 4, d_state=17, expand=2)
    q, k, v = (torch.randn(3, n, 40, requires_grad=True) for n in (20, 70, 70))
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = m(q, k, v)
            runs.append([out] + list(torch.autograd.grad(out.pow(2).sum(), [q, k, v, *m.parameters()])))
    finally:
        torch.set_num_threads(before)
    assert m.kernel_used == "mamba_cpu"
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_gnu_compiler_builds_the_threaded_kernel():
    """With GCC (whose OpenMP runtime torch's Linux wheels ship) the kernel is built with OpenMP,
    so its work items run on torch's threads, and loading it adds no second OpenMP runtime to the
    process (it binds to the one torch loaded; checked in a fresh process)."""
    import os
    import subprocess
    import sys

    if not cpu_kernel.available():
        pytest.skip(f"the compiled CPU scan is unavailable here: {cpu_kernel.unavailable_reason()}")
    version = subprocess.run(cpu_kernel.KERNEL.compiler().split() + ["--version"], capture_output=True, text=True)
    if "Free Software Foundation" not in version.stdout or "clang" in version.stdout.lower():
        pytest.skip("the compiler is not GCC")
    assert cpu_kernel.threaded()
    code = ("import torch\nfrom canvas_plugin_mamba import cpu_kernel\n"
            "def omp():\n    return sorted({l.split()[-1] for l in open('/proc/self/maps') if 'gomp' in l})\n"
            "before = omp()\nassert cpu_kernel.available() and cpu_kernel.threaded()\nprint(before == omp(), before)\n")
    env = dict(os.environ)
    env.pop(cpu_kernel.ENV, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.startswith("True"), out.stdout + out.stderr[-2000:]


def test_compiler_without_openmp_gets_the_one_thread_build(tmp_path):
    """A compiler that refuses ``-fopenmp`` (Apple's clang, say; simulated by an unknown flag):
    the kernel is built without it, runs, and says it is not threaded; no warning."""
    import os
    import subprocess
    import sys

    _needs_build_tools()
    code = ("import warnings\nwarnings.simplefilter('error')\nimport torch\n"
            "from canvas_plugin_mamba import cpu_kernel\nfrom canvas_plugin_mamba.module import MambaAttention\n"
            "cpu_kernel.KERNEL._openmp = ('-fno-such-openmp-flag',)\nm = MambaAttention(8, 4)\nq = torch.randn(1, 5, 8)\n"
            "m(q, q, q).sum().backward()\nprint(m.kernel_used, cpu_kernel.threaded())\n")
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path))
    env.pop(cpu_kernel.ENV, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.stdout.split() == ["mamba_cpu", "False"], out.stderr[-2000:]


def test_no_home_folder_falls_back_with_one_warning(fresh_state):
    """No ``TORCH_EXTENSIONS_DIR`` and no home folder (a container user without a passwd entry):
    one warning naming the variable, the PyTorch scan (it was pathlib's RuntimeError)."""
    import os

    _needs_build_tools()
    fresh_state.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    fresh_state.delenv("HOME", raising=False)
    fresh_state.setattr(os.path, "expanduser", lambda p: p)  # what it returns when no home is found
    _falls_back_with_warning("no home folder.*TORCH_EXTENSIONS_DIR")


def test_kernel_check_names_a_missing_ninja(fresh_state, tmp_path):
    """A compiler but no ninja (torch's extension builder needs it; pip-installed torch does not
    bring it) and no cached build: the registry's check says so, so a compiled program resolves
    CPU mamba to the PyTorch scan instead of a kernel='mamba_cpu' that fails at its first call."""
    from canvas_plugin_mamba.plugin import _cpu_kernel_problems

    real = shutil.which
    fresh_state.setattr(shutil, "which",
                        lambda name, *a, **k: None if name == "ninja" else real(name, *a, **k))
    fresh_state.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    if cpu_kernel.KERNEL.compiler() is None:
        pytest.skip("no C++ compiler here")
    assert _cpu_kernel_problems(None) == [cpu_kernel.static_problem()]
    assert "ninja" in cpu_kernel.static_problem()


@pytest.mark.parametrize("conn", [dict(t_src=0, t_dst=0), dict(t_src=0, t_dst=-1), dict(), "periodic"])
def test_canvas_layer_reads_only_linked_keys(conn):
    """In a canvas layer (float64), each output row of the compiled scan depends on the row's own
    input and linked keys only, on exactly the positions the PyTorch scan's rows depend on, with
    the same values (same-frame, previous-frame, every-frame and a periodic held region)."""
    if not cpu_kernel.available():
        pytest.skip(f"the compiled CPU scan is unavailable here: {cpu_kernel.unavailable_reason()}")
    from canvas_core import AttentionDispatcher
    from canvas_core.schema import CanvasLayout, CanvasTopology, Connection, RegionSpec

    T = 4
    lay = CanvasLayout(T=T, H=3, W=3, d_model=8, regions={
        "video": (0, T, 0, 2, 0, 3), "a": (0, T, 2, 3, 0, 2), "r": RegionSpec((0, T, 2, 3, 2, 3), period=2)})
    if conn == "periodic":
        top = CanvasTopology(connections=[Connection("r", "video", t_src=0, t_dst=0, fn="mamba")])
    else:
        top = CanvasTopology(connections=[Connection("a", "video", fn="mamba", **conn)])
    N = T * 9
    linked = (torch.as_tensor(top.to_attention_mask(lay)) > 0) | torch.eye(N, dtype=torch.bool)
    x = torch.randn(2, N, 8, dtype=torch.float64, requires_grad=True)
    seen = {}
    for kernel in ("mamba_cpu", "mamba_torch"):
        torch.manual_seed(0)
        layer = AttentionDispatcher(top, lay, 8, 4).double()
        mods = [m for m in layer.modules() if isinstance(m, MambaAttention)]
        for m in mods:
            m.kernel = kernel
        out = layer(x)
        deps = torch.stack([torch.autograd.grad(out[:, i].sum(), x, retain_graph=True)[0].abs().sum((0, 2)) > 0
                            for i in range(N)])
        assert {m.kernel_used for m in mods} == {kernel}
        seen[kernel] = (out.detach(), deps)
    assert not (seen["mamba_cpu"][1] & ~linked).any()
    assert torch.equal(seen["mamba_cpu"][1], seen["mamba_torch"][1])
    assert torch.allclose(seen["mamba_cpu"][0], seen["mamba_torch"][0], rtol=1e-12, atol=1e-12)


def test_kernel_check_without_a_compiler_does_not_import_torch(tmp_path):
    """Looking for a cached build (no compiler) names it after torch's version without importing
    torch (the same name as with torch imported): listing the registry must stay light
    (tests/plugins/test_no_torch.py)."""
    import os
    import subprocess
    import sys

    kernel = cpu_kernel.KERNEL
    code = ("import sys\nfrom canvas_plugin_mamba import cpu_kernel\nk = cpu_kernel.KERNEL\n"
            "print(cpu_kernel.static_problem() is not None, k._name(k._variants()[0]), 'torch' in sys.modules)\n")
    env = dict(os.environ, CXX="/nonexistent/c++", TORCH_EXTENSIONS_DIR=str(tmp_path))
    env.pop(cpu_kernel.ENV, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", kernel._name(kernel._variants()[0]), "False"], out.stderr


@pytest.mark.parametrize("kernel", ["mamba_cpu", "mamba_torch"])
@pytest.mark.parametrize("fused", [False, True])
def test_double_backward_names_mamba(kernel, fused, monkeypatch, scan_kernel_ok):
    """A second derivative through mamba (a gradient penalty) is an UnavailableError naming it, on
    every path; the first derivative with create_graph=True still works."""
    from canvas_core.errors import UnavailableError
    from canvas_plugin_mamba import module as mamba_module

    scan_kernel_ok("cpu" if kernel == "mamba_cpu" else "torch")
    monkeypatch.setattr(mamba_module, "_FUSE_EAGER", fused)
    m = MambaAttention(16, 2, kernel=kernel)
    q = torch.randn(1, 5, 16, requires_grad=True)
    kv = torch.randn(1, 9, 16, requires_grad=True)
    g, = torch.autograd.grad(m(q, kv, kv).square().sum(), kv, create_graph=True)
    assert g.shape == kv.shape and torch.isfinite(g).all()
    with pytest.raises(UnavailableError, match="mamba.*no second derivative"):
        g.square().sum().backward()


def test_cxx_with_a_launcher_counts_as_a_compiler(monkeypatch):
    """CXX="ccache g++" (a launcher and a compiler) is judged by its first word."""
    monkeypatch.setenv("CXX", "ccache g++")
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}" if name in ("ccache", "g++") else None)
    assert cpu_kernel.KERNEL.compiler() == "ccache g++"
    monkeypatch.setenv("CXX", "/nonexistent/c++ -O2")
    assert cpu_kernel.KERNEL.compiler() is None


@pytest.mark.parametrize("shape", ["keys", "rows"])
def test_queries_whose_allowed_keys_all_come_after_their_read_output_zero(shape):
    """Without a key at or before its read position a query outputs exactly 0, and with one it
    does not (the check needs no (queries x keys) matrix when there is no mask)."""
    torch.manual_seed(0)
    m = MambaAttention(8, 2).double()
    Nq, Nk = 4, 12  # reads at 2, 5, 8, 11
    q, kv = torch.randn(2, Nq, 8, dtype=torch.float64), torch.randn(2, Nk, 8, dtype=torch.float64)
    allowed = torch.zeros(2, Nq if shape == "rows" else 1, Nk, dtype=torch.bool)
    allowed[..., 6:] = True  # keys 6.. only: queries 0 and 1 (reads 2 and 5) have none
    if shape == "rows":
        allowed[1, 0, 1] = True  # batch 1, query 0 also has key 1 (before its read at 2)
    out = m(q, kv, kv, key_mask=allowed)
    zero = out.abs().sum(-1) == 0
    expected = torch.tensor([[True, True, False, False], [shape == "keys", True, False, False]])
    assert torch.equal(zero, expected)
    assert torch.equal(m(q, kv, kv).abs().sum(-1) == 0, torch.zeros(2, Nq, dtype=torch.bool))
