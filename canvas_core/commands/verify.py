"""``canvas verify [FILE]``: build a schema's (or program's) canvas layers and check that they
read only what the topology declares (:func:`canvas_core.verify_structure`).

Exit status: 0 when the structure verifies, 1 when something undeclared was read (with
``--require-signal``, also when a declared connection carries no signal), 2 for bad arguments or files
and for a plugin's type or kernel that fails under the probe (it raises, or returns NaN / inf): one
line naming it.  Whatever plugins print while they load and run goes to standard error, so that the
report (``--json`` included) is all that standard output holds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable, Optional

from canvas_core.commands._output import plugin_output_to_stderr
from canvas_core.runtime.verify_limits import MAX_VERIFY_LAYERS, MAX_VERIFY_PROBES


def _int_at_least(minimum: int, wanted: str, maximum: Optional[int] = None, too_big: Optional[str] = None):
    """An argparse ``type`` reading an integer >= ``minimum`` (and <= ``maximum`` when given);
    ``wanted`` names it in the error, ``too_big`` (default ``wanted``) when it is over ``maximum``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {v}")
        if maximum is not None and v > maximum:
            raise argparse.ArgumentTypeError(f"expected {too_big or wanted}, got {v}")
        return v

    return parse


_positive = _int_at_least(1, "a positive integer")
_nonneg = _int_at_least(0, "an integer >= 0")
#: the seeds torch and numpy both take (as ``canvas demo --seed``)
_seed = _int_at_least(0, "an integer >= 0", 2 ** 63 - 1, "a seed below 2**63")
#: ``--probes`` and ``--layers`` stop at the API's own bounds (verify_limits: MAX_VERIFY_PROBES,
#: MAX_VERIFY_LAYERS), so the CLI and ``verify_structure(probes=, layers=)`` refuse the same numbers
_probe_count = _int_at_least(1, "a positive integer", MAX_VERIFY_PROBES,
                             f"at most {MAX_VERIFY_PROBES} probes per query")
#: widest layers ``--width`` builds: which positions a layer reads does not depend on its width,
#: and a width of 40,000 asks for gigabytes per layer
MAX_VERIFY_WIDTH = 4096
_width = _int_at_least(1, "a positive integer", MAX_VERIFY_WIDTH, f"a width of at most {MAX_VERIFY_WIDTH}")
_layer_count = _int_at_least(1, f"a layer count from 1 to {MAX_VERIFY_LAYERS}", MAX_VERIFY_LAYERS)


def _progress_line() -> Callable[[str, int, int], None]:
    """A one-line progress display on stderr (redrawn at most 5 times a second): the part being
    probed, the query probes done and the elapsed time."""
    start, last = time.monotonic(), [0.0]

    def show(part: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] < 0.2 and done < total:
            return
        last[0] = now
        line = f"  probing {part}: {done}/{total} query probes, {now - start:.0f} s"
        print("\r" + line.ljust(79), end="", file=sys.stderr, flush=True)

    return show


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", default=None,
                        help="schema or program JSON (default: the bundled robot-arm example)")
    parser.add_argument("--layers", type=_layer_count, default=1,
                        help="canvas layers stacked (default 1: one layer, checked exactly per fn group)")
    parser.add_argument("--width", type=_width, default=None,
                        help=f"width of the probed layers, at most {MAX_VERIFY_WIDTH} (default: the schema's "
                             "d_model, at most 32; "
                             "which positions a layer reads does not depend on it)")
    parser.add_argument("--heads", type=_positive, default=None,
                        help="attention heads (default: the largest of 4, 2, 1 dividing the width)")
    parser.add_argument("--max-exact", type=_nonneg, default=512,
                        help="probe every query position up to this many positions (default 512)")
    parser.add_argument("--samples", type=_positive, default=256,
                        help="query positions sampled on larger canvases (default 256)")
    parser.add_argument("--probes", type=_probe_count, default=2,
                        help=f"random probes per query (default 2, at most {MAX_VERIFY_PROBES})")
    parser.add_argument("--seed", type=_seed, default=0, help="random seed, 0 to 2**63 - 1 (default 0)")
    parser.add_argument("--require-signal", action="store_true",
                        help="also fail when a declared connection carries no signal at all")
    parser.add_argument("--as-built", action="store_true",
                        help="probe the core's reference kernel in the mode the layers built it in (default: its "
                             "leaner segments mode on canvases of 1,024 positions or more; same function, faster)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    with plugin_output_to_stderr():  # plugins print at import, in hooks, in forward: not into the report
        report, label, heads, d_model = _verify(args)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(dict(report.to_dict(), source=label, layers=args.layers), indent=2, default=str))
    else:
        print(f"verified {label}: {args.layers} layer(s) of width {d_model}, {heads} heads\n")
        print(report)
    return 0 if report.ok else 1


def _verify(args: argparse.Namespace):
    """``(report, label, heads, width)``: the file compiled, its layers built and verified."""
    from canvas_core.commands.compile import load_program_or_schema
    from canvas_core.errors import SchemaError

    program, schema, label = load_program_or_schema(args.file)
    from canvas_core.compiler import ProgramCompiler
    from canvas_core.program import CanvasProgram

    if program is None:
        program = CanvasProgram(schema=schema)
    compiled = ProgramCompiler(program).compile(device="cpu", dtype="float32")
    plan = compiled.plan
    d_model = args.width or min(int(plan.layout.d_model), 32)
    heads = args.heads or next(h for h in (4, 2, 1) if d_model % h == 0)
    if d_model % heads:
        raise SchemaError(f"--heads {heads} does not divide the width {d_model}; pick a divisor")
    import torch
    from torch import nn

    from canvas_core.runtime.canvas_attention import CanvasAttention
    from canvas_core.runtime.verify import verify_structure

    torch.manual_seed(args.seed)
    try:
        layers = [CanvasAttention(plan, d_model=d_model, n_heads=heads) for _ in range(args.layers)]
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and "allocate" not in str(exc):
            raise
        raise SchemaError(f"not enough memory to build {args.layers} canvas layer(s) of width {d_model} for "
                          f"{label}; use a smaller --width or fewer --layers") from None
    model = layers[0] if len(layers) == 1 else nn.Sequential(*layers)
    report = verify_structure(model, d_model=d_model, max_exact=args.max_exact, samples=args.samples, probes=args.probes,
                              seed=args.seed, require_signal=args.require_signal, as_built=args.as_built,
                              progress=_progress_line() if sys.stderr.isatty() else None)
    return report, label, heads, d_model
