"""scripts/gpu-prepare.sh deletes and rebuilds its output folder: it must refuse a GPU_WHEELS that
holds anything but wheels (found in the audit: GPU_WHEELS=. would have deleted the checkout)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _prepare(out: str):
    env = dict(os.environ, GPU_WHEELS=out)
    return subprocess.run(["bash", "scripts/gpu-prepare.sh"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="gpu-prepare needs the .venv")
@pytest.mark.parametrize("kind", ["folder with a file", "regular file", "symlink to a folder"])
def test_refuses_to_delete_an_output_path_that_is_not_a_wheel_folder(tmp_path, kind):
    keep = tmp_path / "data"
    keep.mkdir()
    (keep / "notes.txt").write_text("keep me")
    out = {"folder with a file": keep, "regular file": keep / "notes.txt"}.get(kind)
    if out is None:
        out = tmp_path / "link"
        out.symlink_to(tmp_path / "empty", target_is_directory=True)
        (tmp_path / "empty").mkdir()
    proc = _prepare(str(out))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "refusing to delete it" in proc.stderr
    assert (keep / "notes.txt").read_text() == "keep me" and os.path.lexists(out)


def test_list_prints_the_requirements():
    proc = subprocess.run(["bash", "scripts/gpu-prepare.sh", "--list"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0 and "pydantic" in proc.stdout.split()
