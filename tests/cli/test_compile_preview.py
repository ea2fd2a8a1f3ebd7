"""``canvas compile --device cuda`` on a machine without CUDA previews the plan a CUDA machine
would get (marked as such), and resolution hints read as one sentence."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from canvas_core import CanvasLayout, CanvasSchema, CanvasTopology, Connection, ProgramCompiler
from canvas_core.errors import CompileError, UnavailableError
from canvas_core.runtime.kernels import kernel_for

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="the preview is for machines without CUDA")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "canvas_core.cli", *args], capture_output=True, text=True,
                          timeout=120)


def _schema():
    layout = CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"a": (0, 2, 0, 2, 0, 1), "b": (0, 2, 0, 2, 1, 2)})
    return CanvasSchema(layout=layout, topology=CanvasTopology(connections=[
        Connection(src="a", dst="b"), Connection(src="b", dst="b", fn="mamba")]))


@no_cuda
def test_cli_cuda_preview_shows_the_cuda_kernel_and_says_preview():
    proc = _cli("compile", "--device", "cuda")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("previewed ")
    assert "PREVIEW for cuda" in proc.stdout
    # the CUDA machine's choice (flex), not this machine's CPU fallback
    rows = [line for line in proc.stdout.splitlines() if line.startswith("#0 ")]
    assert rows and " flex " in rows[0] and "reference" not in rows[0]


@no_cuda
def test_cli_cuda_preview_json_is_marked():
    proc = _cli("compile", "--device", "cuda", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["preview"] is True


def test_cpu_compile_is_not_a_preview():
    proc = _cli("compile", "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["preview"] is False


@no_cuda
def test_preview_plan_refuses_to_run():
    compiled = ProgramCompiler(_schema()).compile(device="cuda", preview=True)
    assert compiled.preview and "PREVIEW" in compiled.report()
    with pytest.raises(CompileError, match="preview"):
        kernel_for(compiled.plan, "cross_attention", n_heads=2, head_dim=4)


@no_cuda
def test_preview_still_checks_everything_but_presence():
    # a dtype the kernel does not support is still a reason in a preview
    compiled = ProgramCompiler(_schema()).compile(device="cuda", dtype="float64", preview=True)
    row = next(r for r in compiled.resolutions.values() if r.requested == "cross_attention")
    assert row.kernel != "flex"
    assert any(name == "flex" and any("float64" in reason for reason in reasons) for name, reasons in row.rejected)


@no_cuda
def test_unavailable_kernel_hint_is_one_sentence():
    with pytest.raises(UnavailableError) as info:
        ProgramCompiler(_schema()).compile(device="cuda", kernel="flex")
    msg = str(info.value)
    assert "To fix: Run on a device the implementation supports." in msg
    assert "To fix: or" not in msg and ": or " not in msg


@no_cuda
def test_a_cuda_compile_without_cuda_says_its_kernels_are_this_machines():
    """Without preview the plan holds what runs here; the report says first that this machine
    has no cuda and points to preview=True (it read as a cuda plan whose kernels 'cannot run on
    cuda')."""
    compiled = ProgramCompiler(_schema()).compile(device="cuda")
    assert compiled.device_missing and not compiled.preview and compiled.to_dict()["device_missing"] is True
    assert compiled.report().startswith("NOTE: this machine has no cuda device.")
    assert "preview=True" in compiled.report().splitlines()[0]


def test_a_preview_for_a_device_this_machine_has_does_not_claim_it_lacks_it():
    compiled = ProgramCompiler(_schema()).compile(device="cpu", preview=True)
    first = compiled.report().splitlines()[0]
    assert first.startswith("PREVIEW for cpu") and "no such device" not in first and "has cpu too" in first
    plain = ProgramCompiler(_schema()).compile(device="cpu")
    assert not plain.device_missing and plain.report().startswith("CompiledProgram for cpu")
