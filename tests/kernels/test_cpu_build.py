"""canvas_core.kernels.cpu_build: the parts of a compiled CPU kernel's build that need no compiler
(the kernels that use it, rwkv's and mamba's, test building, loading and the fallback)."""

from __future__ import annotations

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
