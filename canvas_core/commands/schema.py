"""``canvas schema``: print (or write) the JSON Schema of the schema file format."""

from __future__ import annotations

import argparse
import json

from canvas_core.commands._output import output_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", type=output_path, help="write to this file instead of stdout")


def run(args: argparse.Namespace) -> int:
    from canvas_core.schema import schema_json_schema

    text = json.dumps(schema_json_schema(), indent=2) + "\n"
    if args.output:
        from canvas_core._safe_write import atomic_write_text

        # a directory / FIFO / device / missing folder is a one-line CanvasError (exit 2)
        atomic_write_text(args.output, text, "the JSON Schema")
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0
