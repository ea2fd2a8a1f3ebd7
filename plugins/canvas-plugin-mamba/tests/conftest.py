"""The mamba plugin's tests compile into their own inductor cache folder (removed at exit), as the
core tests do (tests/conftest.py): inductor's FX-graph cache key does not see a custom operator's
Python code, so an entry left by an earlier version of an operator could run here."""

import atexit
import os
import shutil
import tempfile

if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="canvas-mamba-tests-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], True)


import pytest  # noqa: E402


@pytest.fixture
def scan_kernel_ok():
    """``check(kernel)``: skips, naming the build problem, when ``kernel == "cpu"`` and the
    compiled CPU scan cannot run on this machine (no C++ compiler, or turned off)."""

    def check(kernel: str) -> None:
        from canvas_plugin_mamba import cpu_kernel

        if kernel == "cpu" and not cpu_kernel.available():
            pytest.skip(f"the compiled CPU scan is unavailable here: {cpu_kernel.unavailable_reason()}")

    return check


@pytest.fixture
def fresh_state(monkeypatch):
    """``monkeypatch``, with the compiled scan's cached setting and build result emptied for the
    test and put back after it (so a test can change the environment and see a fresh decision)."""
    from canvas_plugin_mamba import cpu_kernel

    saved = dict(cpu_kernel.KERNEL._state)
    cpu_kernel.KERNEL.reset()
    yield monkeypatch
    cpu_kernel.KERNEL.reset()
    cpu_kernel.KERNEL._state.update(saved)
