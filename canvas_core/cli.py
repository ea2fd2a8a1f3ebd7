"""The ``canvas`` command.

Each subcommand lives in ``canvas_core/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their subcommand runs, so ``canvas --help``
and ``canvas compile`` stay quick. A ``CanvasError`` is printed as one clear line (exit 2), never
as a traceback; so are a failing standard output and an argument the subcommand does not take.
Ctrl-C, even while the commands load, prints ``canvas CMD: interrupted`` (exit 130).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
import sys
import warnings
from typing import Optional, Sequence

from canvas_core.errors import CanvasError

# subcommand -> (module, one-line help)
COMMANDS = {
    "compile": ("canvas_core.commands.compile", "compile a schema or program and print the resolution report"),
    "plugins": ("canvas_core.commands.plugins", "list installed plugins, what they register, and failures"),
    "demo": ("canvas_core.commands.demo", "the main job: a frozen one-step world model looped to predict k steps ahead, "
                                          "against its controls (--task blob: declare, compile, graft, train, draw)"),
    "draw": ("canvas_core.commands.draw", "draw a schema's canvas layout and topology to a picture (PNG, SVG or PDF)"),
    "embed": ("canvas_core.commands.embed", "fill every region's semantic embedding with a text embedder"),
    "schema": ("canvas_core.commands.schema", "print the JSON Schema of the schema file format"),
    "verify": ("canvas_core.commands.verify", "check that a schema's canvas layers read only what its topology declares"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line answer to bad arguments (exit 2), subcommand parsers included."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from canvas_core import __version__

    parser = _Parser(
        prog="canvas",
        description="canvas-core: declare a transformer's latent space, compile it into fast modules.",
    )
    parser.add_argument("--version", action="version", version=f"canvas-core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module, _parser=p)
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:  # a command whose module is missing reports itself when used
            p.set_defaults(_import_error=exc)
            continue
        mod.add_arguments(p)
    return parser


def _tolerant_streams() -> None:
    """Print what the terminal cannot encode (a lone surrogate in a region name, say) as escapes
    instead of failing with UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass


def _quiet_stdout() -> None:
    """After a closed pipe (``canvas plugins --json | head -1``): send what is left of stdout to
    the null device, so that the interpreter's final flush does not fail again."""
    try:
        if sys.stdout is sys.__stdout__:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


#: errors of a write that has no file name: the disk or device behind stdout is full or failing
_WRITE_ERRNOS = {errno.ENOSPC, errno.EIO, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


#: quoted text (a file name, a repr), kept as it is; else a number of more than 25 digits standing
#: alone (not part of a word or path), plain or written with thousands separators (``1,234,...``)
_LONG_NUMBER = re.compile(r"""(?<!\w)('(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")"""
                          r"|(?<![\w./\\])(\d{1,3}(?:,\d{3}){8,}|\d{26,})(?![\w/\\]|\.\w)")


def abbreviate_numbers(message: str) -> str:
    """``message`` with every number of 26 digits or more standing alone cut to its first and last
    digits and its length (``999999...9999 (300 digits)``): an error about a size typed with
    hundreds of digits stays one readable line.  Digits in quoted text or inside a name or path
    (``'run_2024....json'``) stay, so that the name can be copied."""
    def short(m: "re.Match[str]") -> str:
        if m.group(2) is None:
            return m.group()
        digits = m.group(2).replace(",", "")
        return f"{digits[:6]}...{digits[-4:]} ({len(digits):,} digits)"
    return _LONG_NUMBER.sub(short, message)


def printable(text: str, keep: str = "\n") -> str:
    """``text`` with control and other unprintable characters (an escape sequence, a carriage
    return, a right-to-left override in a file's or plugin's text) written as ``\\x1b``-style
    escapes, so that they cannot rewrite the terminal; the characters of ``keep`` stay, and so do
    the zero-width (non-)joiners U+200C / U+200D that Persian words and emoji sequences need."""
    if text.isprintable():
        return text
    rest = text
    for c in keep:
        rest = rest.replace(c, "")
    if rest.isprintable():  # unprintable only by its kept newlines: every long report
        return text
    # piece by piece between the kept characters: only a piece with something unprintable in it
    # is escaped one character at a time (a Python step per character)
    pieces = re.split(f"([{re.escape(keep)}])", text) if keep else [text]
    return "".join(p if i % 2 or p.isprintable() else _escape(p, keep) for i, p in enumerate(pieces))


def _escape(text: str, keep: str) -> str:
    return "".join(c if c.isprintable() or c in keep or c in _JOINERS else ascii(c)[1:-1] for c in text)


_JOINERS = "\u200c\u200d"


def _fail(command: str, message: str) -> int:
    print(f"canvas {command}: error: {printable(abbreviate_numbers(message))}", file=sys.stderr)
    return 2


def _warning_line(command: str):
    """``warnings.showwarning`` for the command line: ``canvas CMD: warning: message`` on stderr
    (the default names a line of Python source: the ``canvas`` script's ``sys.exit(main())``)."""
    seen = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = f"canvas {command}: warning: {message}"
        if text in seen:  # matplotlib warns of a missing glyph once per pass over the figure
            return
        seen.add(text)
        print(text, file=file if file is not None else sys.stderr)
    return show


def main(argv: Optional[Sequence[str]] = None) -> int:
    _tolerant_streams()
    command = "?"
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # answered by the subcommand, whose --help lists what it takes
            (getattr(args, "_parser", None) or parser).error(f"unrecognized arguments: {' '.join(extra)}")
        command = getattr(args, "command", None) or "?"
        return _run(parser, args)
    except KeyboardInterrupt:  # Ctrl-C while the command loads or runs: one line, no traceback
        print(f"canvas {command}: interrupted", file=sys.stderr)
        return 130


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the parsed command; user errors become one line on stderr (exit 2)."""
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    if getattr(args, "_import_error", None) is not None:
        print(f"canvas {args.command}: unavailable ({args._import_error})", file=sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    try:
        with warnings.catch_warnings():  # a warning is a line about the input, not about our source
            warnings.showwarning = _warning_line(args.command)
            status = int(module.run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return status
    except CanvasError as exc:
        return _fail(args.command, str(exc))
    except BrokenPipeError:  # the reader went away (`canvas plugins --json | true`): not an error of ours
        _quiet_stdout()
        return 0
    except RecursionError as exc:
        return _fail(args.command, _recursion_message(exc))
    except OSError as exc:  # a path the system refuses (missing folder, read-only, a directory, ...)
        if getattr(exc, "filename", None):
            return _fail(args.command, f"cannot use {exc.filename!r}: {exc.strerror or exc}")
        if exc.errno in _WRITE_ERRNOS:  # files go through _safe_write (a CanvasError): this is stdout
            _quiet_stdout()  # `canvas schema > /dev/full`: the exit's flush would fail again
            return _fail(args.command, f"cannot write the output (standard output): {exc.strerror or exc}")
        return _fail(args.command, f"cannot use a file or device: {exc.strerror or exc}")
    except UnicodeError as exc:
        return _fail(args.command, f"text that cannot be encoded or decoded: {exc}")


def _recursion_message(exc: RecursionError) -> str:
    """What a RecursionError that reached the command means: canvas-core (or the json module)
    recursing over a deeply nested input file, or some other code (a plugin's) recursing without
    end, named by the file and function of the innermost frame."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    ours = os.path.dirname(os.path.abspath(__file__)) + os.sep
    if last is None or os.path.abspath(last.filename).startswith(ours) or \
            os.path.basename(os.path.dirname(last.filename)) == "json":
        return ("the input is nested too deeply to be processed (a JSON file with thousands of nested "
                "arrays/objects?); check the file")
    return (f"code outside canvas-core recursed without end ({last.filename}, in {last.name}); it is not "
            "the input file: fix that code or report it to its author (a plugin's?)")


if __name__ == "__main__":  # python -m canvas_core.cli
    sys.exit(main())
