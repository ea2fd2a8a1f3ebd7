"""The ``canvas`` command.

Each subcommand lives in ``canvas_core/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their subcommand runs, so ``canvas --help``
and ``canvas compile`` stay quick. A ``CanvasError`` is printed as one clear line (exit 2), never
as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from canvas_core.errors import CanvasError

# subcommand -> (module, one-line help)
COMMANDS = {
    "compile": ("canvas_core.commands.compile", "compile a schema or program and print the resolution report"),
    "plugins": ("canvas_core.commands.plugins", "list installed plugins, what they register, and failures"),
    "demo": ("canvas_core.commands.demo", "the end-to-end demo: declare, compile, graft, train, evaluate, draw"),
    "draw": ("canvas_core.commands.draw", "draw a schema's canvas layout and topology to a PNG"),
    "embed": ("canvas_core.commands.embed", "fill every region's semantic embedding with a text embedder"),
    "schema": ("canvas_core.commands.schema", "print the JSON Schema of the schema file format"),
}


def build_parser() -> argparse.ArgumentParser:
    from canvas_core import __version__

    parser = argparse.ArgumentParser(
        prog="canvas",
        description="canvas-core: declare a transformer's latent space, compile it into fast modules.",
    )
    parser.add_argument("--version", action="version", version=f"canvas-core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:  # a command whose module is missing reports itself when used
            p.set_defaults(_import_error=exc)
            continue
        mod.add_arguments(p)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    if getattr(args, "_import_error", None) is not None:
        print(f"canvas {args.command}: unavailable ({args._import_error})", file=sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except CanvasError as exc:
        print(f"canvas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"canvas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # python -m canvas_core.cli
    sys.exit(main())
