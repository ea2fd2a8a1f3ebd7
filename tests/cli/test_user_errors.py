"""Reliability: every user error of the ``canvas`` CLI exits 2 with one line and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from canvas_core.cli import main


@pytest.fixture
def files(tmp_path):
    (tmp_path / "garbage.json").write_text("garbage{{")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00junk")
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "bad.json").write_text('{"layout": {"T": 0}}')
    (tmp_path / "adir").mkdir()
    return tmp_path


@pytest.mark.parametrize("argv, match", [
    (["compile", "nonexistent.json"], "does not exist"),
    (["compile", "garbage.json"], "garbage.json is not valid JSON"),
    (["compile", "binary.json"], "not UTF-8"),
    (["compile", "list.json"], "list.json: a canvas schema must be a JSON object"),
    (["compile", "deep.json"], "too deeply"),
    (["compile", "bad.json"], "bad.json: invalid canvas schema"),
    (["compile", "adir"], "is a directory"),
    (["compile", ""], "not a file name"),
    (["compile", "--device", "bogus"], "bogus"),
    (["compile", "--device", "tpu"], "tpu"),
    (["compile", "--dtype", "float99"], "float99"),
    (["compile", "--kernel", "nope"], "nope"),
])
def test_user_errors_exit_2_with_one_line(files, monkeypatch, capsys, argv, match):
    monkeypatch.chdir(files)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0] and err[0].startswith(f"canvas {argv[0]}: ")
    assert "Traceback" not in err[0]


def test_bad_environment_value_exits_2(monkeypatch, capsys):
    from canvas_core.plugins import reset_plugins

    monkeypatch.setenv("CANVAS_DISABLE_PLUGIN_AUTOLOAD", "maybe")
    reset_plugins()
    try:
        assert main(["plugins"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "CANVAS_DISABLE_PLUGIN_AUTOLOAD='maybe'" in err[0]
    finally:
        monkeypatch.delenv("CANVAS_DISABLE_PLUGIN_AUTOLOAD")
        reset_plugins()


def test_plugins_json_with_a_broken_plugin_installed(tmp_path):
    """A distribution whose plugin raises in its hook and one whose module is missing."""
    dist = tmp_path / "canvas_plugin_brokenzz-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: canvas-plugin-brokenzz\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[canvas]\nbrokenzz = canvas_plugin_brokenzz\nmissingzz = canvas_plugin_missing_zz\n")
    pkg = tmp_path / "canvas_plugin_brokenzz"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        import canvas_core

        @canvas_core.hookimpl
        def canvas_register_attention(registry):
            raise RuntimeError("broken hook zz")
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    env.pop("CANVAS_DISABLE_PLUGIN_AUTOLOAD", None)
    env.pop("CANVAS_PLUGINS", None)
    proc = subprocess.run([sys.executable, "-m", "canvas_core.cli", "plugins", "--json"], env=env, check=False,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback (most recent call last)" not in proc.stderr
    records = {r["name"]: r for r in json.loads(proc.stdout)["plugins"]}
    assert records["brokenzz"]["status"] == "failed" and "broken hook zz" in records["brokenzz"]["error"]
    assert records["missingzz"]["status"] == "failed" and "canvas_plugin_missing_zz" in records["missingzz"]["error"]
