"""``canvas compile --device mps / xpu`` on a machine without that accelerator is a preview too
(found in the audit: it said "compiled ... for mps" and showed this machine's fallbacks)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "canvas_core.cli", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="the preview is for machines without MPS")
def test_mps_without_mps_is_marked_preview():
    proc = _cli("compile", "--device", "mps")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("previewed ") and "PREVIEW for mps" in proc.stdout
    assert json.loads(_cli("compile", "--device", "mps", "--json").stdout)["preview"] is True


def test_cpu_is_never_a_preview():
    proc = _cli("compile", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("compiled ") and "PREVIEW" not in proc.stdout
