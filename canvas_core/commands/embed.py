"""``canvas embed schema.json [-o out.json] [--embedder minilm]``: fill semantic embeddings.

Every region gets ``semantic_type`` (kept, or auto-derived from its name), ``semantic_embedding``
and ``embedding_model`` from a registered text embedder (default ``minilm`` from
``canvas-plugin-semantic``, which runs offline).  Writes the schema JSON to ``-o`` or stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("schema", type=Path, help="schema JSON file")
    parser.add_argument("-o", "--output", type=Path, help="write the embedded schema here (default: stdout)")
    parser.add_argument("--embedder", default="minilm",
                        help="registered embedder name (default: minilm, from canvas-plugin-semantic)")


def run(args: argparse.Namespace) -> int:
    from canvas_core.errors import CanvasError
    from canvas_core.schema import CanvasSchema
    from canvas_core.semantic import embed_schema

    if not args.schema.is_file():
        print(f"canvas embed: schema file {str(args.schema)!r} not found", file=sys.stderr)
        return 2
    try:
        schema = CanvasSchema.from_json(str(args.schema))
        out = embed_schema(schema, args.embedder)
        text = out.to_json()
    except CanvasError as exc:
        print(f"canvas embed: {exc}", file=sys.stderr)
        return 1
    if args.output:
        args.output.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        n = len(out.layout.regions)
        model = next(iter(out.layout.regions.values())).embedding_model if n else "-"
        print(f"wrote {args.output} ({n} regions embedded with {model})")
    else:
        print(text)
    return 0
