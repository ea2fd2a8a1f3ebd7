"""canvas_core.kernels.cpu_build: the parts of a compiled CPU kernel's build that need no compiler
(the kernels that use it, rwkv's and mamba's, test building, loading and the fallback)."""

from __future__ import annotations

import contextlib
import io
import os
import warnings

import pytest

from canvas_core.errors import UnavailableError
from canvas_core.kernels import cpu_build
from canvas_core.kernels.cpu_build import CpuKernel


def test_only_a_finished_library_is_loaded_directly(tmp_path):
    """A cached library is loaded without ninja only when ninja's log records its current
    modification time (a link cut short or a file changed since: rebuilt, never loaded: loading
    a truncated library kills the process with a bus error)."""
    lib = tmp_path / "lib_x.so"
    lib.write_bytes(b"\x7fELF" + bytes(4000))
    assert not cpu_build._finished(str(tmp_path), "lib_x")  # no log
    stamp = os.stat(lib).st_mtime_ns
    (tmp_path / ".ninja_log").write_text(f"# ninja log v5\n0\t5\t{stamp}\tlib_x.so\tabc\n")
    assert cpu_build._finished(str(tmp_path), "lib_x")
    os.utime(lib, ns=(stamp + 10**9, stamp + 10**9))  # as a truncation or copy would change it
    assert not cpu_build._finished(str(tmp_path), "lib_x")


def _kernel(tmp_path, **kw) -> CpuKernel:
    source = tmp_path / "k.cpp"
    source.write_text("// nothing\n")
    return CpuKernel(source, namespace="canvas_test_cpu", probe="f", env="CANVAS_TEST_CPU_KERNEL",
                     label="the test kernel", owner="canvas-plugin-test", **kw)


@pytest.mark.parametrize("setting, fix", [("auto", "use kernel='other'"), ("1", "unset CANVAS_TEST_CPU_KERNEL")])
def test_require_names_the_callers_choice_and_its_advice(tmp_path, monkeypatch, setting, fix):
    """``what`` and ``instead`` word require()'s error; the variable set to 1 is advised as such."""
    monkeypatch.setenv("CANVAS_TEST_CPU_KERNEL", setting)
    k = _kernel(tmp_path, what="test: kernel='compiled'", instead="use kernel='other'")
    monkeypatch.setattr(k, "_build", lambda: "no compiler here (test)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cpu_build.CpuKernelBuildWarning)  # auto warns once: not what is tested
        with pytest.raises(UnavailableError, match=f"^test: kernel='compiled' cannot run: no compiler here .*; {fix}"):
            k.require()


def test_missing_source_names_the_distribution_to_reinstall(tmp_path):
    k = _kernel(tmp_path)
    k.source = tmp_path / "gone.cpp"
    assert k.static_problem().endswith("missing from the installed package (reinstall canvas-plugin-test)")


def test_the_openmp_flags_name_the_threaded_build(tmp_path):
    """The threaded build is tried first with the kernel's OpenMP flags, under its own cached name."""
    k = _kernel(tmp_path)
    k._openmp = ("-fno-such-openmp-flag",)
    threaded, single = k._variants()
    assert threaded[-1] == "-fno-such-openmp-flag" and "-fno-such-openmp-flag" not in single
    assert k._threaded(threaded) and not k._threaded(single)
    assert k._name(threaded) != k._name(single) and k._name(single).startswith("canvas_test_cpu_")


def _with_header(tmp_path) -> CpuKernel:
    """The test kernel with its own shared-header folder (holding a ``cpu_vec.h``)."""
    k = _kernel(tmp_path)
    k.include = tmp_path / "include"
    k.include.mkdir()
    (k.include / "cpu_vec.h").write_text("// v1\n")
    return k


def _fake_finished_build(name: str) -> None:
    """A library under ``TORCH_EXTENSIONS_DIR/name`` that ninja's log records as linked."""
    folder = os.path.join(os.environ["TORCH_EXTENSIONS_DIR"], name)
    os.makedirs(folder)
    lib = os.path.join(folder, name + ".so")
    with open(lib, "wb") as f:
        f.write(b"\x7fELF" + bytes(100))
    with open(os.path.join(folder, ".ninja_log"), "w") as f:
        f.write(f"# ninja log v5\n0\t5\t{os.stat(lib).st_mtime_ns}\t{name}.so\tabc\n")


def test_a_changed_shared_header_is_a_new_build(tmp_path, monkeypatch):
    """The shared headers are part of the build's name: after a header changes (or one is added),
    the build cached for the old header is not this kernel's (it would run the old header's code)."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "te"))
    k = _with_header(tmp_path)
    names = [k._name(flags) for flags in k._variants()]
    for name in names:
        _fake_finished_build(name)
    assert k._cached()
    (k.include / "cpu_vec.h").write_text("// v2\n")
    changed = [k._name(flags) for flags in k._variants()]
    assert not set(changed) & set(names) and not k._cached()
    (k.include / "more.h").write_text("// another shared header\n")
    assert not {k._name(flags) for flags in k._variants()} & set(changed + names)

def test_the_build_has_the_shared_headers_on_its_include_path(tmp_path, monkeypatch):
    """torch's cpp_extension.load is given canvas-core's header folder (the kernels
    ``#include "cpu_vec.h"``), which holds that header."""
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "te"))
    k = _kernel(tmp_path)
    calls = []

    def load(**kw):
        calls.append(kw)
        raise RuntimeError("not built in this test")

    monkeypatch.setattr(k, "static_problem", lambda: None)
    monkeypatch.setattr(cpu_build, "_compiler", lambda: "c++")
    monkeypatch.setattr(cpp_extension, "load", load)
    with contextlib.redirect_stderr(io.StringIO()):
        assert k._build().startswith("building k.cpp with c++ failed")
    assert calls and all(c["extra_include_paths"] == [str(cpu_build._INCLUDE)] for c in calls)
    assert (cpu_build._INCLUDE / "cpu_vec.h").is_file()


def test_a_missing_shared_header_names_canvas_core(tmp_path):
    k = _kernel(tmp_path)
    k.include = tmp_path / "gone"
    assert k.static_problem().endswith("missing from the installed package (reinstall canvas-core)")


def test_shared_headers_ship_as_package_data():
    """Every header in the shared folder matches a canvas_core package-data pattern."""
    import tomllib
    from fnmatch import fnmatch
    from pathlib import Path

    import canvas_core

    root = Path(__file__).resolve().parents[2]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["canvas_core"]
    package = Path(canvas_core.__file__).parent
    headers = [h.relative_to(package).as_posix() for h in cpu_build._INCLUDE.glob("*.h")]
    assert "kernels/csrc/cpu_vec.h" in headers
    assert all(any(fnmatch(h, pattern) for pattern in data) for h in headers)


def test_cpu_id_does_not_depend_on_the_core_count(tmp_path):
    """Builds are named after the CPU's model and flags, not after how many cores list them."""
    from canvas_core.kernels.cpu_build import _cpu_id

    core = "processor\t: {i}\nmodel name\t: Some CPU 9000\nflags\t\t: fpu sse avx2 avx512f\n\n"
    two, four = tmp_path / "two", tmp_path / "four"
    two.write_text("".join(core.format(i=i) for i in range(2)))
    four.write_text("".join(core.format(i=i) for i in range(4)))
    other = tmp_path / "other"
    other.write_text(core.format(i=0).replace("avx512f", "avx2only"))
    assert _cpu_id(str(two)) == _cpu_id(str(four))
    assert _cpu_id(str(two)) != _cpu_id(str(other))


_GLUE = '''
from pathlib import Path
from canvas_core.kernels.cpu_build import CpuKernel

KERNEL = CpuKernel(Path(__file__).with_name("csrc") / "k.cpp", namespace="canvas_glue_cpu", probe="f",
                   env="CANVAS_GLUE_CPU_KERNEL", label="the glue kernel", owner="canvas-plugin-glue")


def usable(x=None):
    """As a plugin's glue asks: through CpuKernel.wanted()."""
    return KERNEL.wanted()


def problems(x=None):
    """As a plugin's registry check asks: unavailable_reason() directly."""
    return KERNEL.unavailable_reason()


def module():
    """A plugin's attention module, asking in its forward (called through torch's nn.Module)."""
    import torch

    class Module(torch.nn.Module):
        def forward(self, x):
            return x if usable() else -x

    return Module()
'''


@pytest.mark.parametrize("entry", ["usable", "problems", "module"])
def test_build_warning_names_the_callers_line(tmp_path, monkeypatch, entry):
    """A failed build's warning points at the line of code that called the plugin (this file):
    past cpu_build's own frames, the plugin package's glue (the package holding the kernel's
    source) and torch's nn.Module call, whichever way the plugin asks."""
    import sys

    import torch

    package = tmp_path / "canvas_plugin_glue"
    (package / "csrc").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "csrc" / "k.cpp").write_text("// nothing\n")
    (package / "glue.py").write_text(_GLUE)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("canvas_plugin_glue", "canvas_plugin_glue.glue"):  # this test's copy, gone after it
        monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.delitem(sys.modules, name)
    from canvas_plugin_glue import glue

    monkeypatch.setattr(glue.KERNEL, "_build", lambda: "no compiler here (test)")
    call = {"usable": glue.usable, "problems": glue.problems, "module": glue.module()}[entry]
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        line = sys._getframe().f_lineno + 1
        call(torch.zeros(1))
    (w,) = [w for w in got if issubclass(w.category, cpu_build.CpuKernelBuildWarning)]
    assert "no compiler here (test)" in str(w.message)
    assert (w.filename, w.lineno) == (__file__, line)
