"""``canvas plugins`` / ``canvas compile`` / ``canvas draw`` against hostile plugins and files: a
plugin that prints while loading cannot corrupt ``--json``; a plugin's control characters are
shown escaped; a dangling or looping symlink and an empty file are named as such."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from canvas_core.cli import main
from canvas_core.plugins import PluginHost, use_host

PRINTING = '''
print("a3 noise from the import")
from canvas_core import hookimpl

@hookimpl
def canvas_register_attention(registry):
    print("a3 noise from the hook")
    registry.add("a3_noisy_attn", "a3_nowhere.mod:Attn")
'''


def _install(site: Path, dist: str, module: str, source: str) -> None:
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[canvas]\n{module} = {module}\n")
    (info / "RECORD").write_text("")


@pytest.mark.parametrize("argv", [["plugins", "--json"], ["compile", "--json"]])
def test_a_plugin_printing_while_it_loads_leaves_the_json_output_one_document(tmp_path, argv):
    _install(tmp_path, "canvas-plugin-a3noisy", "a3noisy", PRINTING)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "canvas_core.cli", *argv], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout)  # nothing but the document on stdout
    assert "a3 noise from the import" in proc.stderr and "a3 noise from the hook" in proc.stderr


class _Dist:
    name, version = "canvas-plugin-a3esc", "0.1"


class _EscapingEntryPoint:
    name, value, dist = "a3esc", "a3esc", _Dist()

    def load(self) -> Any:
        raise RuntimeError("bad\x1b[2J\x1b[31mred\rover\nsecond line\u202eevil")


def test_a_plugins_control_characters_are_shown_escaped_in_the_text_listing():
    from canvas_core.commands.plugins import _text, collect

    with warnings.catch_warnings(), use_host(PluginHost(entry_points=lambda: [_EscapingEntryPoint()])):
        warnings.simplefilter("ignore")
        text = _text(collect())
    assert not any(c in text for c in "\x1b\r\u202e")
    assert "bad\\x1b[2J\\x1b[31mred\\rover\n" in text and "\n          second line\\u202eevil" in text
    assert "\\n" not in text  # the error's lines are lines, the second indented under the first
    assert all(line.isprintable() for line in text.split("\n"))


def test_error_lines_escape_control_characters_but_keep_their_text(tmp_path, capsys):
    from canvas_core.cli import printable

    assert printable("plain é 中 text") == "plain é 中 text"
    assert printable("a\x1b[2Jb\tc\nd") == "a\\x1b[2Jb\\tc\nd"
    src = tmp_path / "s.json"
    src.write_text('{"layout": {"T": 1, "spatial_shape": [2], "d_model": 8}, "regions": {"a": {"bounds": [0, 1, 0, 1]}},'
                   ' "metadata": {"k": "\\u001b[2J"}, "\\u001b[31mbogus": 1}')
    assert main(["compile", str(src)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and err.count("\n") == 1


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links here")
def test_dangling_and_looping_links_and_empty_files_are_named_as_such(tmp_path, capsys):
    (tmp_path / "dangling.json").symlink_to(tmp_path / "nowhere.json")
    (tmp_path / "loop1.json").symlink_to(tmp_path / "loop2.json")
    (tmp_path / "loop2.json").symlink_to(tmp_path / "loop1.json")
    (tmp_path / "empty.json").write_text("  \n")
    expect = {"dangling.json": f"is a symbolic link to {str(tmp_path / 'nowhere.json')!r}, which does not exist",
              "loop1.json": "is a symbolic link in a loop of links",
              "empty.json": "is not valid JSON: it is empty;"}
    for name, words in expect.items():
        assert main(["draw", str(tmp_path / name), "-o", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert words in err and "Expecting value" not in err and err.count("\n") == 1, err


def test_compile_refuses_a_region_name_with_control_characters_shown_escaped(tmp_path, capsys):
    src = tmp_path / "esc.json"
    src.write_text('{"layout": {"T": 1, "spatial_shape": [2], "d_model": 8}, '
                   '"regions": {"a\\u001b[2J": {"bounds": [0, 1, 0, 1]}}}')
    assert main(["compile", str(src)]) == 2
    captured = capsys.readouterr()
    err = captured.err + captured.out
    assert "\x1b" not in err and "a\\x1b[2J" in err and "control character" in err
