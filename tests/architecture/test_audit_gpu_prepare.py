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
                          text=True, timeout=300)


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


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="gpu-prepare needs the .venv")
def test_wheels_hold_the_working_tree_not_a_stale_build_folder(tmp_path):
    # setuptools packages all of an in-tree build/lib/: a module deleted or renamed since an earlier
    # build stayed in the wheels the GPU machine installs (found in the audit: plugins/api.py and
    # runtime/backbone_attention.py were still in the canvas-core wheel)
    import zipfile

    stale_dir = ROOT / "build" / "lib" / "canvas_core"
    made = [p for p in (ROOT / "build", ROOT / "build" / "lib", stale_dir) if not p.exists()]
    stale_dir.mkdir(parents=True, exist_ok=True)
    stale = stale_dir / "_audit_stale_module.py"
    stale.write_text("# left by an earlier build\n")
    try:
        proc = _prepare(str(tmp_path / "wheels"))
    finally:
        stale.unlink()
        for p in reversed(made):
            p.rmdir()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "wheels").glob("canvas_core-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "canvas_core/_audit_stale_module.py" not in names
    assert "canvas_core/__init__.py" in names and "canvas_core/plugins/__init__.py" in names
