"""``canvas draw SCHEMA.json -o layout.png``: a picture of a schema's layout and topology."""

from __future__ import annotations

import argparse
from pathlib import Path

from canvas_core.errors import CanvasError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("schema", help="schema JSON file (a CanvasSchema), or 'example' for the bundled one")
    parser.add_argument("-o", "--output", type=Path, default=None, help="PNG to write (default: SCHEMA.png)")
    parser.add_argument("--max-frames", type=int, default=8, help="frames drawn at most (default 8)")


#: picture formats the drawing can be written in (by the file name's suffix)
FORMATS = (".png", ".svg", ".pdf")


def _check_output(out: Path) -> None:
    """One-line CanvasError for an output the drawing cannot go to, before anything is drawn."""
    from canvas_core._safe_write import check_write_target

    check_write_target(out, "picture")  # a directory, FIFO, device, missing folder, read-only file
    if out.suffix.lower() not in FORMATS:
        raise CanvasError(f"cannot draw to {str(out)!r}: the file name must end in {', '.join(FORMATS)} "
                          f"(e.g. -o {out.stem or 'layout'}.png)")


def run(args: argparse.Namespace) -> int:
    from canvas_core.commands.compile import load_schema
    from canvas_core.viz import draw_schema

    schema, source = load_schema(args.schema)
    out = args.output or Path(Path(source).stem + ".png")
    _check_output(out)
    if not schema.layout.regions:
        raise CanvasError(f"{source} declares no regions, so there is nothing to draw; add a region to "
                          "its \"regions\"")
    draw_schema(schema, out, max_frames=args.max_frames)
    print(f"wrote {out}")
    return 0
