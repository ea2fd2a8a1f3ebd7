"""The ``canvas`` command against hostile input: it never writes over the file it reads, refuses
absurd numbers before working on them, and answers Ctrl-C and a full stdout in one line."""

from __future__ import annotations

import errno
import io
import os
import shutil
import sys
from pathlib import Path

import pytest

from canvas_core import cli
from canvas_core.cli import main
from canvas_core.commands.compile import BUNDLED

EXAMPLE = Path(cli.__file__).parent / "examples" / f"{BUNDLED}.json"


def _one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def test_draw_never_replaces_the_schema_it_draws(tmp_path, monkeypatch, capsys):
    """A schema file named like a picture (``s.png``) is its own default output; ``-o`` may also
    name it, directly or through a link. Drawing used to replace the JSON with the PNG."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(EXAMPLE, "s.png")
    os.symlink("s.png", "link.png")
    before = Path("s.png").read_bytes()
    for argv in (["draw", "s.png"], ["draw", "s.png", "-o", "s.png"], ["draw", "s.png", "-o", "link.png"],
                 ["draw", str(tmp_path / "s.png"), "-o", "./s.png"]):
        assert main(argv) == 2
        _one_line_error(capsys, "canvas draw: error:", "schema file being drawn", "nothing was written")
        assert Path("s.png").read_bytes() == before
    assert main(["draw", "s.png", "-o", "other.png"]) == 0  # any other output is drawn
    assert Path("other.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path("s.png").read_bytes() == before


@pytest.mark.parametrize("argv, expected", [
    (["--seed", str(2 ** 64)], "expected a seed below 2**63, got"),
    (["--seed", "99999999999999999999"], "expected a seed below 2**63, got"),
    (["--probes", "10000000000000000000"], "expected at most 256 probes per query, got"),
    (["--probes", "257"], "expected at most 256 probes per query, got 257"),
    (["--width", "40000"], "expected a width of at most 4096, got 40000"),
])
def test_verify_refuses_absurd_numbers_while_parsing(argv, expected, capsys):
    """A seed torch cannot take was a RuntimeError traceback; a probe count of 10**19 ran for ever;
    a width of 40,000 asked the allocator for 19 GB per layer (so only the parser runs here)."""
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["verify", *argv])
    assert info.value.code == 2
    _one_line_error(capsys, "canvas verify: error: argument", expected)


def test_verify_largest_seed_and_probe_count_are_accepted():
    from canvas_core.commands.verify import MAX_VERIFY_PROBES, MAX_VERIFY_WIDTH

    args = cli.build_parser().parse_args(["verify", "--seed", str(2 ** 63 - 1), "--probes",
                                          str(MAX_VERIFY_PROBES), "--width", str(MAX_VERIFY_WIDTH)])
    assert (args.seed, args.probes, args.width) == (2 ** 63 - 1, MAX_VERIFY_PROBES, MAX_VERIFY_WIDTH)
    import torch

    torch.Generator().manual_seed(args.seed)  # the largest seed is one torch takes


def test_verify_out_of_memory_is_one_line(monkeypatch, capsys):
    """An allocator failure while building the layers (a small machine) names the options to lower."""
    import canvas_core.runtime.canvas_attention as ca

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(ca, "CanvasAttention", no_memory)
    assert main(["verify", "--width", "4096", "--layers", "3"]) == 2
    _one_line_error(capsys, "not enough memory to build 3 canvas layer(s) of width 4096", "--width", "--layers")


class _FullStream(io.TextIOBase):
    """A stdout on a full disk (``canvas schema > /dev/full``)."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("argv", [["schema"], ["compile"], ["compile", "--json"]])
def test_a_full_stdout_is_named_as_such(argv, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", _FullStream())
    assert main(argv) == 2
    _one_line_error(capsys, f"canvas {argv[0]}: error: cannot write the output (standard output):",
                    os.strerror(errno.ENOSPC))


def test_ctrl_c_while_loading_is_one_line(monkeypatch, capsys):
    """Ctrl-C while the parser imports the commands (the first second of every run) printed a
    KeyboardInterrupt traceback."""
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    try:
        status = main(["compile"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C while loading escaped canvas_core.cli.main as a KeyboardInterrupt")
    assert status == 130
    assert capsys.readouterr().err == "canvas ?: interrupted\n"


def test_ctrl_c_while_drawing_keeps_the_old_picture(tmp_path, monkeypatch, capsys):
    """The picture is written to a temporary file and renamed: Ctrl-C in the middle leaves the
    old picture whole and no temporary file behind."""
    import matplotlib.figure

    out = tmp_path / "x.png"
    out.write_bytes(b"old picture")

    def interrupted_savefig(self, fname, **kwargs):
        Path(fname).write_bytes(b"half a pict")
        raise KeyboardInterrupt

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", interrupted_savefig)
    assert main(["draw", "example", "-o", str(out)]) == 130
    assert capsys.readouterr().err == "canvas draw: interrupted\n"
    assert out.read_bytes() == b"old picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_each_warning_is_printed_once(capsys):
    """matplotlib warns of a glyph missing from the font once per pass over the figure (layout,
    then rendering): the command printed every such warning twice."""
    show = cli._warning_line("draw")
    for _ in range(3):
        show("Glyph 35270 missing from font(s) DejaVu Sans.", UserWarning, "x.py", 1)
    show("another warning", UserWarning, "x.py", 2)
    assert capsys.readouterr().err.splitlines() == [
        "canvas draw: warning: Glyph 35270 missing from font(s) DejaVu Sans.",
        "canvas draw: warning: another warning",
    ]


@pytest.mark.parametrize("task, module, runner", [("life", "canvas_core.demo.life_demo", "run_life_demo"),
                                                  ("blob", "canvas_core.demo.pipeline", "run_demo")])
def test_demo_refuses_an_unwritable_out_before_training(task, module, runner, tmp_path, monkeypatch, capsys):
    """``canvas demo --out`` a read-only folder trained every model (minutes) and failed only when
    it saved the loop checkpoint."""
    import importlib

    trained = []
    monkeypatch.setattr(importlib.import_module(module), runner, lambda cfg: trained.append(cfg))
    locked = tmp_path / "locked"
    locked.mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    (tmp_path / "pics" / "canvas.png").mkdir(parents=True)
    try:
        locked.chmod(0o555)
        for out, words in ((locked, "read-only"), (locked / "new" / "deeper", "read-only"),
                           (blocker / "sub", "Not a directory"), (tmp_path / "pics", "canvas.png")):
            assert main(["demo", "--task", task, "--quick", "--no-progress", "--out", str(out)]) == 2
            _one_line_error(capsys, "canvas demo: error:", str(out), words)
        assert trained == [] and not (locked / "new").exists()
    finally:
        locked.chmod(0o755)
    assert main(["demo", "--task", task, "--quick", "--no-progress", "--out", str(tmp_path / "fine")]) == 0
    assert len(trained) == 1


@pytest.mark.parametrize("argv", [["compile", "a.json", "b.json"], ["verify", "--bogus"], ["draw", "x.json", "y"]])
def test_an_extra_argument_points_to_the_subcommand_help(argv, capsys):
    """``canvas compile a.json b.json`` sent the user to ``canvas --help``, which does not list
    compile's options."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    _one_line_error(capsys, f"canvas {argv[0]}: error: unrecognized arguments: {argv[-1]}",
                    f"(see canvas {argv[0]} --help)")


def _within(seconds: int, fn, *args):
    """``fn(*args)``, or a TimeoutError after ``seconds`` (the slow versions ran for minutes)."""
    import signal

    def too_slow(*_):
        raise TimeoutError(f"{fn.__name__} took over {seconds} s")

    old = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(seconds)
    try:
        return fn(*args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_region_labels_of_a_tall_canvas_take_linear_time():
    """The widest row of a region was counted by scanning every cell once per row: an 80,000 x 1
    canvas took a minute per frame (6.4 billion steps), ``canvas draw`` of it eight."""
    from canvas_core import CanvasLayout
    from canvas_core.viz import region_labels

    layout = CanvasLayout(T=1, spatial_shape=(80_000, 1), d_model=8,
                          regions={"tall": (0, 1, 1, 80_000, 0, 1), "dot": (0, 1, 0, 1, 0, 1)})
    labels = _within(10, region_labels, layout, 0)
    # 'tall' is 1 cell wide: too narrow for its name; the 1-cell 'dot' is never inline
    assert [(lab.name, lab.inline, lab.text) for lab in labels] == [("tall", False, "1"), ("dot", False, "2")]


def test_region_labels_of_many_regions_scan_the_frame_once():
    """Every region scanned the whole frame for its cells: 40,000 one-cell regions on a 200 x 200
    frame took about a minute per frame (65,536 regions, the most a layout has: several)."""
    from canvas_core import CanvasLayout
    from canvas_core.viz import region_labels

    n = 200
    layout = CanvasLayout(T=1, spatial_shape=(n, n), d_model=8,
                          regions={f"r{i}_{j}": (0, 1, i, i + 1, j, j + 1) for i in range(n) for j in range(n)})
    labels = _within(10, region_labels, layout, 0)
    assert [(lab.number, lab.y, lab.x, lab.inline) for lab in labels] == [
        (i * n + j + 1, i, j, False) for i in range(n) for j in range(n)]


def test_draw_schema_refuses_an_unknown_picture_format_before_drawing(tmp_path, monkeypatch):
    """``draw_schema(schema, "layout.bogus")`` drew the whole figure and failed only when saving it."""
    import matplotlib.pyplot as plt

    from canvas_core import CanvasError
    from canvas_core.schema import CanvasSchema
    from canvas_core.viz import draw_schema

    def drew(*args, **kwargs):
        raise AssertionError("the figure was drawn before the format was checked")

    schema = CanvasSchema.from_json(EXAMPLE)
    monkeypatch.setattr(plt, "figure", drew)
    with pytest.raises(CanvasError, match=r"cannot draw to '.*layout\.bogus': matplotlib cannot write 'bogus' "
                                          r"pictures; give a name ending in one of .*\.png.*nothing was drawn"):
        draw_schema(schema, tmp_path / "layout.bogus")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    for name in ("layout.jpg", "layout.SVG", "layout"):  # a name without a suffix is a PNG
        assert draw_schema(schema, tmp_path / name).stat().st_size > 1000
    assert (tmp_path / "layout").read_bytes()[:4] == b"\x89PNG"
