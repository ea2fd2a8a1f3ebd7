"""``canvas draw SCHEMA.json -o layout.png``: a picture of a schema's layout and topology."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional

from canvas_core.commands._output import output_path
from canvas_core.errors import CanvasError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("schema", help="schema JSON file (a CanvasSchema), or 'example' for the bundled one")
    parser.add_argument("-o", "--output", type=output_path, default=None,
                        help="picture to write, .png, .svg or .pdf (default: the schema file's name with .png, "
                             "in the current folder); never the schema file itself")
    parser.add_argument("--max-frames", type=int, default=8, help="frames drawn at most (default 8)")
    parser.add_argument("--max-width", type=int, default=None, metavar="PIXELS",
                        help="widest picture allowed, in pixels (default 16384, at most 65536); a drawing of "
                             "more frames than fit is refused")


#: resolution of the pictures ``canvas draw`` writes (draw_schema's default)
DPI = 110
#: picture formats the drawing can be written in (by the file name's suffix)
FORMATS = (".png", ".svg", ".pdf")


def _check_output(out: Path, source: Optional[Path] = None) -> None:
    """One-line CanvasError for an output the drawing cannot go to, before anything is drawn:
    among them the schema file ``source`` itself (``canvas draw s.png`` of a JSON file named
    ``s.png``, or ``-o`` a link to it), which the picture would replace."""
    from canvas_core._safe_write import check_write_target

    real = check_write_target(out, "picture")  # a directory, FIFO, device, missing folder, read-only file
    if out.suffix.lower() not in FORMATS:
        raise CanvasError(f"cannot draw to {str(out)!r}: the file name must end in {', '.join(FORMATS)} "
                          f"(e.g. -o {out.stem or 'layout'}.png)")
    if source is not None and os.path.exists(real) and os.path.samefile(real, source):
        raise CanvasError(f"refusing to draw to {str(out)!r}: it is the schema file being drawn, which the "
                          f"picture would replace; nothing was written. Give another output with -o "
                          f"(e.g. -o {out.stem or 'layout'}_layout.png)")


def run(args: argparse.Namespace) -> int:
    from canvas_core.commands.compile import BUNDLED, load_schema
    from canvas_core.viz import MAX_WIDTH, check_picture_width, draw_schema, frames_drawn

    schema, source = load_schema(args.schema)
    bundled = args.schema in (None, "example", BUNDLED)
    if args.output is None and bundled:
        out = Path(BUNDLED + ".png")  # the bundled example: its name, not the label "bundled example ..."
    else:
        out = args.output or Path(Path(source).stem + ".png")
    _check_output(out, None if bundled else Path(source))
    if not schema.layout.regions:
        raise CanvasError(f"{source} declares no regions, so there is nothing to draw; add a region to "
                          "its \"regions\"")
    # before drawing: a picture wider than the cap is refused, naming this command's options
    if args.max_frames < 1:
        raise CanvasError(f"--max-frames {args.max_frames}: draw at least one frame (--max-frames 1 or more; "
                          "the default is 8)")
    max_width = MAX_WIDTH if args.max_width is None else args.max_width
    check_picture_width(len(frames_drawn(schema.layout.T, args.max_frames)), schema.topology is not None,
                        DPI, max_width, options=("--max-frames", "--max-width"))
    draw_schema(schema, out, max_frames=args.max_frames, dpi=DPI, max_width=max_width)
    print(f"wrote {out}")
    return 0
