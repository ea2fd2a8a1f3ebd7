"""``canvas draw SCHEMA.json -o layout.png``: a picture of a schema's layout and topology."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("schema", help="schema JSON file (a CanvasSchema), or 'example' for the bundled one")
    parser.add_argument("-o", "--output", type=Path, default=None, help="PNG to write (default: SCHEMA.png)")
    parser.add_argument("--max-frames", type=int, default=8, help="frames drawn at most (default 8)")


def run(args: argparse.Namespace) -> int:
    from canvas_core.commands.compile import load_schema
    from canvas_core.viz import draw_schema

    schema, source = load_schema(args.schema)
    out = args.output or Path(Path(source).stem + ".png")
    draw_schema(schema, out, max_frames=args.max_frames)
    print(f"wrote {out}")
    return 0
