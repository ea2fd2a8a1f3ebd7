"""Every ``canvas`` command answers bad arguments and paths with one line and exit status 2.

In-process (``main(argv)``) for the answers; subprocesses only where the process itself is the
subject (a closed pipe, a FIFO, /dev/zero under a memory cap).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from canvas_core.cli import main

SCHEMA = {"layout": {"T": 2, "H": 1, "W": 1, "d_model": 4},
          "regions": {"a": {"bounds": [0, 1, 0, 1, 0, 1]}, "b": {"bounds": [1, 2, 0, 1, 0, 1]}},
          "topology": [{"src": "a", "dst": "b"}]}


@pytest.fixture
def files(tmp_path):
    (tmp_path / "ok.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "empty.json").write_text(json.dumps({"layout": SCHEMA["layout"], "regions": {}}))
    (tmp_path / "dup_T.json").write_text('{"layout": {"T": 2, "T": 3, "H": 1, "W": 1, "d_model": 4}, "regions": {}}')
    (tmp_path / "dup_region.json").write_text(
        '{"layout": {"T": 2, "H": 1, "W": 1, "d_model": 4}, "regions": '
        '{"a": {"bounds": [0, 1, 0, 1, 0, 1]}, "a": {"bounds": [1, 2, 0, 1, 0, 1]}}}')
    (tmp_path / "surrogate.json").write_text(
        '{"layout": {"T": 2, "H": 1, "W": 1, "d_model": 4}, "regions": {"a\\udc80": {"bounds": [0, 1, 0, 1, 0, 1]}}}')
    (tmp_path / "deep_dict.json").write_text('{"a":' * 50_000 + "1" + "}" * 50_000)
    (tmp_path / "huge_T.json").write_text(
        json.dumps({"layout": {"T": 10**12, "H": 1, "W": 1, "d_model": 4}, "regions": {}}))
    (tmp_path / "adir").mkdir()
    ro = tmp_path / "ro"
    ro.mkdir()
    return tmp_path


CASES = [
    (["compile", "dup_T.json"], "duplicate key 'T' in layout"),
    (["compile", "dup_region.json"], "duplicate key 'a' in regions"),
    (["compile", "surrogate.json"], "not valid Unicode"),
    (["compile", "deep_dict.json"], "too deeply"),
    (["compile", "huge_T.json"], "CANVAS_MAX_POSITIONS"),
    (["embed", "dup_region.json"], "duplicate key 'a'"),
    (["draw", "empty.json"], "no regions"),
    (["draw", "ok.json", "-o", "out.txt"], "must end in .png"),
    (["draw", "ok.json", "-o", "missing/dir/x.png"], "does not exist"),
    (["draw", "ok.json", "-o", "adir"], "directory"),
    (["draw", "ok.json", "--max-frames", "0", "-o", "x.png"], "--max-frames 0: draw at least one frame"),
    (["schema", "-o", "missing/dir/s.json"], "does not exist"),
    (["schema", "-o", "adir"], "directory"),
    (["demo", "--loops", "1000000"], "--loops"),  # over CANVAS_MAX_LOOPS, or not a loop task
    (["demo", "--batch-size", "100000000"], "CANVAS_MAX_BATCH"),
    (["draw", "--max-frames", "x", "ok.json"], "invalid int value"),
    (["compile", "--bogus"], "unrecognized arguments"),
    (["no-such-command"], "invalid choice"),
]


@pytest.mark.parametrize("argv, match", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_one_line_and_exit_2(files, monkeypatch, capsys, argv, match):
    monkeypatch.chdir(files)
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse answers bad arguments by exiting
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert err[0].startswith("canvas")


def test_read_only_folder_is_answered(files, monkeypatch, capsys):
    if os.geteuid() == 0:  # root writes anywhere: use a path under a file instead
        target = "ok.json/s.json"
    else:
        os.chmod(files / "ro", 0o500)
        target = "ro/s.json"
    monkeypatch.chdir(files)
    assert main(["schema", "-o", target]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def _run(cmd, **kw):
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120, **kw)


PY = f"{sys.executable} -m canvas_core.cli"


def test_closed_pipe_is_survived():
    r = _run(f"{PY} plugins --json | true; echo status=${{PIPESTATUS[0]}}")
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert "status=0" in r.stdout


def test_dev_zero_and_fifo_fail_fast(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    # a memory cap well under what reading /dev/zero to the end would take
    r = _run(f"ulimit -v 3000000; {PY} compile /dev/zero; echo status=$?; {PY} compile {fifo}; echo status=$?")
    assert r.stdout.count("status=2") == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and "CANVAS_MAX_FILE_BYTES" in lines[0] and "not valid JSON" in lines[1], lines


def test_text_the_terminal_cannot_encode_is_printed_escaped(tmp_path):
    schema = dict(SCHEMA, regions={"caf\u00e9\u2615": SCHEMA["regions"]["a"], "b": SCHEMA["regions"]["b"]},
                  topology=[{"src": "caf\u00e9\u2615", "dst": "b"}])
    (tmp_path / "uni.json").write_text(json.dumps(schema))
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    r = subprocess.run([sys.executable, "-m", "canvas_core.cli", "compile", str(tmp_path / "uni.json")],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "caf\\xe9\\u2615" in r.stdout


def test_a_warning_is_one_line_naming_the_command(tmp_path, capsys):
    """A warning about the input (a connection linking nothing) reads ``canvas compile: warning:
    ...``, not Python's ``file:line: UserWarning`` followed by a line of the ``canvas`` script."""
    bad = dict(SCHEMA, topology=[{"src": "a", "dst": "b", "t_src": 0, "t_dst": -5, "temporal_fill": "drop"}])
    (tmp_path / "unlinked.json").write_text(json.dumps(bad))
    assert main(["compile", str(tmp_path / "unlinked.json")]) == 0
    err = capsys.readouterr().err
    assert "canvas compile: warning: connection #0 'a' -> 'b' links nothing" in err
    assert "UserWarning" not in err and "sys.exit" not in err


def test_drawing_the_bundled_example_writes_robot_arm_png(tmp_path, monkeypatch, capsys):
    """Without -o the picture is named after the schema file; for the bundled example that is
    robot_arm.png (it was 'bundled example robot_arm.png', the display label)."""
    monkeypatch.chdir(tmp_path)
    assert main(["draw", "example"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["robot_arm.png"]
    assert "wrote robot_arm.png" in capsys.readouterr().out
