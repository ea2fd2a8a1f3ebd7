"""``canvas embed schema.json [-o out.json] [--embedder minilm]``: fill semantic embeddings.

The file may be a schema or a program (a program's schema is embedded, its region and connection
programs kept as they are).

Every region gets ``semantic_type`` (kept, or auto-derived from its name with
``auto_semantic_type``), ``semantic_embedding`` and ``embedding_model`` from a registered text
embedder (default ``minilm`` from ``canvas-plugin-semantic``, which runs offline).

Output: the embedded schema JSON goes to ``-o`` when given (a one-line summary is printed),
otherwise to stdout, so ``canvas embed s.json > s.embedded.json`` works.  The input file is
never modified unless ``-o`` names it.  What plugins print (importing, registering, building or
running the embedder) goes to stderr, so it cannot corrupt the JSON; an embedder that fails while
embedding is one line naming it and its provider (exit 2), and nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from canvas_core.commands._output import input_path, output_path, plugin_output_to_stderr

INSTALL_HINT = "install the default embedder with `pip install canvas-plugin-semantic`"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("schema", type=input_path, help="schema or program JSON file")
    parser.add_argument("-o", "--output", type=output_path,
                        help="write the embedded schema here (default: print it to stdout)")
    parser.add_argument("--embedder", default="minilm",
                        help="registered embedder name (default: minilm, from canvas-plugin-semantic)")


def run(args: argparse.Namespace) -> int:
    from canvas_core.commands.compile import load_program_or_schema
    from canvas_core.errors import SchemaFormatError, UnknownNameError
    from canvas_core.program import CanvasProgram
    from canvas_core.semantic import embed_schema

    path: Path = args.schema
    if not path.exists():
        raise SchemaFormatError(f"schema file {str(path)!r} not found; pass the path of a schema or program JSON file")
    if not path.is_file():
        raise SchemaFormatError(f"schema path {str(path)!r} is not a file; pass the path of a schema or program JSON file")
    program, schema, _ = load_program_or_schema(str(path))
    if args.output:  # a missing folder or read-only file is refused before the (slow) embedding
        from canvas_core._safe_write import check_write_target

        what = "the canvas program" if program is not None else "the canvas schema"
        check_write_target(args.output, what, error=SchemaFormatError)
    try:
        with plugin_output_to_stderr():  # the plugins load, and the embedder runs, in here
            out = embed_schema(schema, args.embedder)
    except UnknownNameError as exc:
        msg = str(exc)
        if "pip install" in msg or "installed but not loaded" in msg:
            raise  # the plugin layer already says how to fix it
        if args.embedder in ("minilm", "sentence-transformers"):
            msg = f"{msg.rstrip('.')}; {INSTALL_HINT}"
        else:
            msg = f"{msg.rstrip('.')}; choose one with --embedder, or {INSTALL_HINT}"
        raise UnknownNameError(msg) from None
    if program is not None:  # a program file stays a program file, its schema embedded
        out = CanvasProgram(schema=out, regions=program.regions, connections=program.connections,
                            version=program.version)
    if args.output:
        text = out.to_json(args.output)  # SchemaFormatError on an unwritable path
        n = len(out.layout.regions)
        model = next(iter(out.layout.regions.values())).embedding_model if n else "-"  # a program has .layout too
        print(f"wrote {args.output} ({n} regions embedded with {model})")
    else:
        text = out.to_json()
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0
