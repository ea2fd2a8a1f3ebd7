"""``canvas compile [FILE]``: compile a schema (or program) and print what it became.

Prints the layout (regions, positions), the connections with their resolved fn types, and the
compiler's resolution report: for each connection the implementation and kernel chosen on the
target device, the providing plugin, and every rejected candidate with its reasons.  A fn name
whose plugin registration was refused because a builtin has it is reported as a name clash (on
stderr too); ``--strict`` turns that into exit status 1.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Tuple

from canvas_core.commands._output import plugin_output_to_stderr
from canvas_core.errors import SchemaFormatError
from canvas_core.schema.jsonio import json_type_name, loads_strict, read_text_capped

BUNDLED = "robot_arm"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", default=None,
                        help="schema or program JSON (default: the bundled robot-arm example)")
    parser.add_argument("--device", default="cpu", help="target device: cpu, cuda, cuda:1, ... (default cpu)")
    parser.add_argument("--dtype", default="float32", help="target dtype (default float32)")
    parser.add_argument("--kernel", default=None, help="prefer this attention kernel (e.g. reference, flex)")
    parser.add_argument("--json", action="store_true", help="print the compiled plan as JSON")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when a fn name the program uses clashed with a builtin "
                             "(a plugin's registration of it was refused; see `canvas plugins`)")


def load_program_or_schema(source):
    """``(program_or_None, schema, label)`` from a path, a bundled example name, or None."""
    if source in (None, "example", BUNDLED):
        text = resources.files("canvas_core.examples").joinpath(f"{BUNDLED}.json").read_text("utf-8")
        label = f"bundled example {BUNDLED}.json"
    else:
        if not str(source).strip() or "\x00" in str(source):
            raise SchemaFormatError(f"{source!r} is not a file name; give a schema/program JSON file or 'example'")
        path = Path(source)
        if not path.exists():
            raise SchemaFormatError(f"{source!r} {_missing(path)}; give a schema/program JSON file or 'example'")
        if path.is_dir():
            raise SchemaFormatError(f"{source!r} is a directory; give a schema/program JSON file in it")
        try:
            text, label = read_text_capped(path, repr(str(source))), str(path)
        except UnicodeDecodeError:
            raise SchemaFormatError(f"{source!r} is not UTF-8 text; give a schema/program JSON file") from None
        except OSError as exc:
            raise SchemaFormatError(f"cannot read {source!r}: {exc.strerror or exc}") from None
    data = loads_strict(text, label)  # repeated keys refused; too deep nesting answered in one line
    if not isinstance(data, dict):  # named as JSON names it: null, array, ... (not NoneType, list)
        raise SchemaFormatError(f"{label}: a canvas schema must be a JSON object {{\"layout\": ..., "
                                f"\"regions\": ...}} (a program too), got {json_type_name(data)}")
    from canvas_core.schema import CanvasSchema

    program_keys = {"program_version", "region_programs", "connection_programs"}
    if isinstance(data, dict) and (("schema" in data and "layout" not in data) or program_keys & set(data)):
        from canvas_core.program import CanvasProgram

        try:
            program = CanvasProgram.from_dict(data)
        except SchemaFormatError as exc:
            raise SchemaFormatError(f"{label}: {exc}") from None
        return program, program.schema, label
    try:
        return None, CanvasSchema.from_dict(data), label
    except SchemaFormatError as exc:
        raise SchemaFormatError(f"{label}: {exc}") from None


def _missing(path: Path) -> str:
    """Why ``path`` (which does not exist as far as ``Path.exists`` can tell) cannot be read."""
    if not path.is_symlink():
        return "does not exist"
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13
        return "is a symbolic link in a loop of links"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link in a loop of links"
    return f"is a symbolic link to {os.readlink(path)!r}, which does not exist"


def load_schema(source) -> Tuple[object, str]:
    """``(schema, label)`` from a path, a bundled example name, or None."""
    _, schema, label = load_program_or_schema(source)
    return schema, label


def run(args: argparse.Namespace) -> int:
    from canvas_core.compiler import ProgramCompiler
    from canvas_core.program import CanvasProgram

    from canvas_core.plugins import get_host

    with plugin_output_to_stderr():  # a plugin's prints must not corrupt --json's output
        program, schema, label = load_program_or_schema(args.file)
        get_host().ensure_loaded()
    if program is None:
        program = CanvasProgram(schema=schema)
    if str(args.device).split(":")[0] not in ("cpu", "meta"):
        # The torch-free layers only ask a torch that is already loaded whether CUDA (and which
        # device index) exists; the command loads it so that `--device cuda:9` is checked for real.
        import torch  # noqa: F401
    kwargs = {"device": args.device, "dtype": args.dtype}
    if args.kernel:
        kwargs["kernel"] = args.kernel
    from canvas_core.devices import device_missing

    # Without the device, show what a machine with it would get (marked as a preview), rather
    # than this machine's fallbacks under the other device's name.
    kwargs["preview"] = device_missing(str(args.device))
    # compiling runs plugins' availability checks: what they print goes to stderr, and the
    # output is written whole afterwards
    with plugin_output_to_stderr():
        compiled = ProgramCompiler(program).compile(**kwargs)
        if args.json:
            text = json.dumps(compiled.to_dict(), indent=2, default=str)
        else:  # names from the file are shown with their control characters escaped
            from canvas_core.cli import printable

            what = "previewed" if compiled.preview else "compiled"
            text = "\n".join(printable(x) for x in (f"{what} {label} for {args.device} / {args.dtype}\n",
                                                     schema.layout.summary(), "", compiled.report()))
    print(text)
    clashes = sorted({c for r in compiled.resolutions.values() for c in r.clash})
    for c in clashes:
        print(f"canvas compile: name clash: {c}", file=sys.stderr)
    return 1 if clashes and getattr(args, "strict", False) else 0
