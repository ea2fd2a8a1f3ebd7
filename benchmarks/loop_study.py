#!/usr/bin/env python
"""Loop study: does looping a frozen one-step world model predict k steps ahead?

    python benchmarks/loop_study.py --quick                         # CI smoke run (seconds)
    python benchmarks/loop_study.py --seed-list 0 --json s0.json    # one seed of the full study
    python benchmarks/loop_study.py --merge s0.json s1.json s2.json --plot docs/loop_study_life.png
    python benchmarks/loop_study.py --task blob ...                 # the earlier moving-blob study

The backbone is the tiny CogVideoX shipped with canvas-core that learned ONE step of Conway's Game
of Life on an 8 x 8 torus (``canvas_core/demo/weights/cogvideox-life``, made by
``scripts/pretrain_life_backbone.py``; good at one step, not perfect). For k in ``--ks`` every
condition of :mod:`canvas_core.demo.life_study` learns to output the board k steps ahead: the
frozen backbone looped as a whole step map (``scope="model"``), as one span of both blocks
(``scope="stack"``) or block by block (``scope="block"``), the frozen backbone at one loop, the
unfrozen backbone in one pass and an unfrozen ``2k``-block copy; the explicit rollout (the one-step
model applied k times, decoded between steps) needs no training and is the bound. Each trained
condition runs a small learning-rate sweep per seed, chosen on validation boards; the tables give
test-board exact accuracy and cell error (mean +- std over seeds, per-seed ratios), the one-pass
conditions again after ``k`` times the steps (equal compute), accuracy at other loop counts
(test-time depth) and adaptive exit. See ``docs/looping.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent


def _ints(text: str, name: str, parser) -> List[int]:
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        parser.error(f"{name} must be comma-separated integers, got {text!r}")
    if not values or values[0] < 1 and name != "--seed-list":
        parser.error(f"{name} must list integers >= 1, got {text!r}")
    return values


def report(records: List[dict], steps: int, seeds: List[int]) -> List[str]:
    from canvas_core.demo.life_runs import compute_table, depth_table, exit_table, main_table, summary_lines

    n = len(seeds)
    return (["== exact-state accuracy on held-out boards, equal steps "
             f"({steps} steps per condition; mean +- std over {n} seed{'s' if n != 1 else ''} {seeds}) =="]
            + main_table(records)
            + [f"== equal compute: one-pass conditions after k x {steps} steps (a k-loop step costs k passes) =="]
            + compute_table(records, steps)
            + ["== test-time depth: exact accuracy against the k-step board at other loop counts (mean over seeds) =="]
            + depth_table(records)
            + ["", "== adaptive exit (at most k iterations; a sample stops once its state changes by < exit_tol) =="]
            + exit_table(records)
            + ["", "summary (mean exact accuracy):"] + summary_lines(records))


def plot(records: List[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from canvas_core.demo.life_runs import depth_counts

    ks = sorted({r["k"] for r in records if r["k"] > 1})
    fig, axes = plt.subplots(1, len(ks), figsize=(3.6 * len(ks), 3.4), squeeze=False)
    for ax, k in zip(axes[0], ks):
        counts = depth_counts(k)
        for kind, style, label in (("rollout", "k:", "rollout, n steps"), ("model", "o-", "frozen + loops, model"),
                                   ("stack", "s--", "frozen + loops, stack")):
            rows = [r for r in records if r["k"] == k and r["kind"] == kind and "depth" in r]
            if rows:
                ys = [statistics.fmean(float(r["depth"].get(n, r["depth"].get(str(n)))) for r in rows) for n in counts]
                ax.plot(counts, ys, style, ms=4, label=label)
        ax.axvline(k, color="grey", lw=0.8)
        ax.set_title(f"target: {k} steps ahead", fontsize=9)
        ax.set_xlabel("loops (iterations) at test time")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("exact boards")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def merge(files: List[Path], plot_path) -> int:
    """Print the tables of several ``--json`` files (same options, different seeds) as one study."""
    records, seeds, settings = [], [], set()
    for f in files:
        data = json.loads(Path(f).read_text())
        settings.add(json.dumps({k: v for k, v in data["args"].items() if k not in ("seed_list", "seeds", "json", "plot", "threads")},
                                sort_keys=True))
        seeds += data["seeds"]
        records += data["records"]
    if len(settings) != 1 or len(set(seeds)) != len(seeds):
        print(f"error: the files were run with different options or repeat seeds {seeds}", file=sys.stderr)
        return 2
    args = json.loads(settings.pop())
    print(f"loop study (Game of Life, merged from {len(files)} files): ks {args['ks']}, seeds {sorted(seeds)}, "
          f"{args['steps']} steps of {args['batch_size']} boards")
    for line in report(records, int(args["steps"]), sorted(seeds)):
        print(line)
    if plot_path is not None:
        plot(records, plot_path, f"Game of Life, frozen one-step backbone: {args['steps']} steps, {len(seeds)} seeds")
        print(f"wrote {plot_path}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [part for a in argv for part in (a.split("=", 1) if a.startswith("--task=") else [a])]
    if "--task" in argv:
        i = argv.index("--task")
        task = argv[i + 1] if i + 1 < len(argv) else ""
        if task not in ("life", "blob"):
            print(f"error: --task must be life (default) or blob, got {task!r}", file=sys.stderr)
            return 2
        del argv[i:i + 2]
        if task == "blob":
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import loop_study_blob

            return loop_study_blob.main(argv)
    parser = argparse.ArgumentParser(description="loop study on the shipped one-step Game of Life backbone "
                                                 "(--task blob: the moving-blob study)")
    parser.add_argument("--task", choices=("life", "blob"), default="life",
                        help="life (default): this study; blob: the moving-blob study, with its own options")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: k 1,2, 3 steps, 32 boards, 1 seed")
    parser.add_argument("--ks", default="1,2,4,8", help="steps ahead to predict (default 1,2,4,8)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds 0..n-1 (default 3)")
    parser.add_argument("--seed-list", default=None, help="exactly these seeds, e.g. 1 or 0,1,2")
    parser.add_argument("--kinds", default="rollout,model,stack,block,frozen1,unfrozen,deeper",
                        help="conditions (default: all)")
    parser.add_argument("--lean-k", type=int, default=8,
                        help="from this k on, only model / frozen1 / unfrozen run, at the lr chosen at the "
                             "previous k (default 8; the CPU budget)")
    parser.add_argument("--steps", type=int, default=40, help="training steps per condition (default 40)")
    parser.add_argument("--batch-size", type=int, default=32, help="boards per step (default 32)")
    parser.add_argument("--test", type=int, default=512, help="held-out test boards per seed (default 512)")
    parser.add_argument("--val", type=int, default=256, help="validation boards for the lr choice (default 256)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="train nothing: tables of --json files")
    parser.add_argument("--plot", type=Path, default=None, help="png of exact accuracy against loop count per k")
    parser.add_argument("--json", type=Path, default=None, help="write every record as JSON")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.plot)
    from canvas_core.demo.life_study import KINDS

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        parser.error(f"--kinds: unknown {unknown}; choose from {list(KINDS)}")
    ks = _ints(args.ks, "--ks", parser)
    if min(args.seeds, args.steps, args.batch_size, args.test, args.val) < 1:
        parser.error("--seeds, --steps, --batch-size, --test and --val must be >= 1")
    seeds = list(range(args.seeds)) if args.seed_list is None else _ints(args.seed_list, "--seed-list", parser)
    if args.quick:
        ks, seeds = [k for k in ks if k <= 2] or [1], seeds[:1]
        args.steps, args.batch_size, args.test, args.val = min(args.steps, 3), min(args.batch_size, 8), 32, 16
    import torch

    from canvas_core.demo.life_pretrain import load_life_backbone
    from canvas_core.demo.life_runs import LR_GRID, run_seed

    torch.set_num_threads(max(1, args.threads))
    lrs = {k: v[:1] for k, v in LR_GRID.items()} if args.quick else LR_GRID
    start = time.perf_counter()
    print(f"loop study (Game of Life on an 8 x 8 torus): ks {ks}, seeds {seeds}, {args.steps} steps of "
          f"{args.batch_size} boards, learning rates {lrs}, {args.test} test / {args.val} validation boards"
          + (" [--quick: a smoke run, the numbers mean nothing]" if args.quick else ""))
    backbone = load_life_backbone()
    records = []
    for seed in seeds:
        records += run_seed(backbone, seed, ks, kinds, args.steps, args.batch_size, args.test, args.val, lrs,
                            lean_k=args.lean_k)
    print()
    for line in report(records, args.steps, seeds):
        print(line)
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "seeds": seeds,
                                         "records": records}, indent=1))
    if args.plot is not None:
        plot(records, args.plot, f"Game of Life, frozen one-step backbone: {args.steps} steps, {len(seeds)} seeds")
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
