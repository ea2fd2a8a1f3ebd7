#!/usr/bin/env python
"""Loop study: loop count 1-4 x {frozen, unfrozen} backbone, over several seeds.

    python benchmarks/loop_study.py --task blob --quick     # CI smoke run: a few steps, seconds
    nice -n 10 python benchmarks/loop_study.py --task blob --plot docs/loop_study.png --json loop_study.json

Every condition starts from the pretrained tiny CogVideoX shipped with canvas-core
(``canvas_core/demo/weights/cogvideox-blob``, made by ``scripts/pretrain_backbone.py``), grafts
``L`` loops onto every block and trains, for the same step budget, on the demo's moving-blob task:
*frozen* trains only the loop parameters and the action head, *unfrozen* trains every parameter.
Within one seed every condition sees the same training videos in the same order, the same head
initialisation and the same held-out videos. The table gives, per condition, the trainable
parameters and the mean +- standard deviation over seeds of the held-out action (velocity) MSE,
its ratio to predicting the training mean, and the reward MSE; then the ratios the seed documents'
claims are about (3 loops vs 1 loop; frozen with loops vs unfrozen). See ``docs/looping.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch


def _fmt(values: List[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} +- {std:.4f}"


def run_study(loops: List[int], seeds: List[int], steps: int, batch_size: int, eval_samples: int, lr: float,
              train_videos=None, log=print) -> Dict[str, dict]:
    """Train every (loops, frozen) condition for every seed; returns per-condition summaries."""
    from canvas_core.demo.backbones import get_backbone
    from canvas_core.demo.pretrain import load_shipped
    from canvas_core.demo.study import Condition, TrainOptions, errors, prepare, run_condition, targets

    recipe = get_backbone("cogvideox")
    backbone = load_shipped(recipe.load).eval()
    setup = prepare(recipe, backbone, 0)
    conditions = [Condition(n, frozen) for frozen in (True, False) for n in loops]
    runs: Dict[str, dict] = {c.name: {"loops": c.loops, "frozen": c.frozen, "action": [], "reward": [],
                                      "vs_mean": [], "seconds": []} for c in conditions}
    for seed in seeds:
        held_out = setup.task.sample(eval_samples, torch.Generator().manual_seed(seed + 10_000))
        mean = targets(setup.task.sample(1024, torch.Generator().manual_seed(seed + 100)), True).mean(0)
        mean_err = errors(mean.expand(eval_samples, -1), held_out)["action"]
        opts = TrainOptions(steps=steps, batch_size=batch_size, lr=lr, seed=seed, train_videos=train_videos)
        for cond in conditions:
            row = run_condition(recipe, backbone, setup, cond, opts, held_out)
            r = runs[cond.name]
            r["trainable"], r["loop_params"] = row["trainable"], row["loop_params"]
            r["action"].append(row["action"])
            r["reward"].append(row["reward"])
            r["vs_mean"].append(row["action"] / mean_err)
            r["seconds"].append(row["seconds"])
            log(f"  seed {seed}  {cond.name:<18} action MSE {row['action']:.4f}  ({row['seconds']:.1f} s)")
    return runs


def table(runs: Dict[str, dict], seeds: List[int]) -> List[str]:
    lines = [f"{'condition':<20}{'loops':>6}{'trainable':>11}{'action MSE (mean +- std)':>27}{'vs mean':>9}"
             f"{'reward MSE (mean +- std)':>27}{'s/run':>7}",
             "-" * 107]
    for name, r in runs.items():
        lines.append(f"{name:<20}{r['loops']:>6}{r['trainable']:>11,}{_fmt(r['action']):>27}"
                     f"{statistics.fmean(r['vs_mean']):>9.2f}{_fmt(r['reward']):>27}{statistics.fmean(r['seconds']):>7.1f}")
    lines.append(f"({len(seeds)} seeds: {seeds}; vs mean: action MSE / MSE of predicting the training mean)")
    return lines


def ratios(runs: Dict[str, dict]) -> List[str]:
    """The comparisons the seed documents make, as ratios of mean action MSE (< 1: the first is better)."""
    mean = {name: statistics.fmean(r["action"]) for name, r in runs.items()}
    frozen = {r["loops"]: name for name, r in runs.items() if r["frozen"]}
    unfrozen = {r["loops"]: name for name, r in runs.items() if not r["frozen"]}
    lines = ["ratios of mean action MSE (< 1: the first condition has the lower error; in brackets the ratio",
             "within each seed, whose runs share data, head initialisation and held-out videos):"]

    def ratio(a: str, b: str) -> str:
        paired = ", ".join(f"{x / y:.2f}" for x, y in zip(runs[a]["action"], runs[b]["action"]))
        return f"  {a:<18} / {b:<18} {mean[a] / mean[b]:.2f}  ({paired})"

    if 1 in frozen:
        lines += [ratio(frozen[n], frozen[1]) for n in sorted(frozen) if n != 1]
    if 1 in unfrozen:
        lines += [ratio(unfrozen[n], unfrozen[1]) for n in sorted(unfrozen) if n != 1]
        lines += [ratio(frozen[n], unfrozen[1]) for n in sorted(frozen)]
    if frozen:
        best = min(frozen, key=lambda n: mean[frozen[n]])
        lines.append(f"best loop count, frozen: {best}" + (f"; unfrozen: {min(unfrozen, key=lambda n: mean[unfrozen[n]])}"
                                                            if unfrozen else ""))
        if unfrozen:
            fb, ub = mean[frozen[best]], min(mean[unfrozen[n]] for n in unfrozen)
            lines.append(f"best frozen vs best unfrozen: {fb / ub:.2f} ({'frozen' if fb < ub else 'unfrozen'} is lower)")
    return lines


def plot(runs: Dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for frozen, style in ((True, "o-"), (False, "s--")):
        rows = sorted((r for r in runs.values() if r["frozen"] == frozen), key=lambda r: r["loops"])
        if not rows:
            continue
        xs = [r["loops"] for r in rows]
        ys = [statistics.fmean(r["action"]) for r in rows]
        es = [statistics.stdev(r["action"]) if len(r["action"]) > 1 else 0.0 for r in rows]
        label = (f"frozen backbone ({rows[0]['trainable']:,}-{rows[-1]['trainable']:,} trainable)" if frozen
                 else f"unfrozen ({rows[0]['trainable']:,}-{rows[-1]['trainable']:,} trainable)")
        ax.errorbar(xs, ys, yerr=es, fmt=style, capsize=4, label=label)
    ax.set_xlabel("loops per block")
    ax.set_xticks(sorted({r["loops"] for r in runs.values()}))
    ax.set_ylabel("held-out action MSE (mean +- std)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def merge(files: List[Path], plot_path) -> int:
    """Print the table of several ``--json`` files (same options, different seeds) as one study."""
    runs: Dict[str, dict] = {}
    seeds: List[int] = []
    settings = set()
    for f in files:
        data = json.loads(Path(f).read_text())
        a = data["args"]
        settings.add((a["loops"], a["steps"], a["batch_size"], a["lr"], a["eval_samples"], a["train_videos"]))
        seeds += data["seeds"]
        for name, r in data["runs"].items():
            into = runs.setdefault(name, {k: v for k, v in r.items() if not isinstance(v, list)})
            for k, v in r.items():
                if isinstance(v, list):
                    into.setdefault(k, []).extend(v)
    if len(settings) != 1 or len(set(seeds)) != len(seeds):
        print(f"error: the files were run with different options {sorted(settings)} or repeat seeds {seeds}",
              file=sys.stderr)
        return 2
    loops, steps, batch, lr, evals, videos = settings.pop()
    print(f"loop study (merged from {len(files)} files): loops {loops} x {{frozen, unfrozen}}, seeds {sorted(seeds)}, "
          f"{steps} steps of {batch} videos ({'a fresh video per sample' if videos == 'None' else 'a fixed set of ' + videos + ' videos'}), "
          f"lr {lr}, {evals} held-out videos")
    print()
    for line in table(runs, sorted(seeds)) + [""] + ratios(runs):
        print(line)
    if plot_path is not None:
        plot(runs, plot_path, f"loop study: shipped tiny CogVideoX, {steps} steps, {len(seeds)} seeds")
        print(f"wrote {plot_path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="loop count x freeze study on the shipped pretrained tiny CogVideoX")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: 6 steps of 4 videos, 16 held-out")
    parser.add_argument("--loops", default="1,2,3,4", help="loop counts (default 1,2,3,4)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds 0..n-1 (default 3)")
    parser.add_argument("--seed-list", default=None, help="exactly these seeds, e.g. 1 or 0,1,2 (overrides --seeds)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="train nothing: print the table (and --plot) of --json files of earlier runs "
                             "(e.g. one per seed, run in parallel)")
    parser.add_argument("--steps", type=int, default=600, help="training steps per run (default 600, as the demo)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-samples", type=int, default=256)
    parser.add_argument("--train-videos", type=int, default=None,
                        help="a fixed labelled training set of this size (default: a fresh video per sample)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--plot", type=Path, default=None, help="write a png of action MSE against loop count")
    parser.add_argument("--json", type=Path, default=None, help="write every run's numbers as JSON")
    args = parser.parse_args(argv)
    try:
        loops = sorted({int(x) for x in args.loops.split(",") if x.strip()})
    except ValueError:
        parser.error(f"--loops must be comma-separated integers, got {args.loops!r}")
    if not loops or loops[0] < 1 or args.seeds < 1 or args.steps < 1 or args.batch_size < 1 or args.eval_samples < 1:
        parser.error("--loops, --seeds, --steps, --batch-size and --eval-samples must be >= 1")
    if args.merge:
        return merge(args.merge, args.plot)
    if args.quick:
        args.steps, args.batch_size, args.eval_samples = min(args.steps, 6), min(args.batch_size, 4), 16
    torch.set_num_threads(max(1, args.threads))
    seeds = list(range(args.seeds))
    if args.seed_list is not None:
        try:
            seeds = sorted({int(x) for x in args.seed_list.split(",") if x.strip()})
        except ValueError:
            parser.error(f"--seed-list must be comma-separated integers, got {args.seed_list!r}")
    start = time.perf_counter()
    data = f"fixed set of {args.train_videos} videos" if args.train_videos else "a fresh video per sample"
    print(f"loop study: loops {loops} x {{frozen, unfrozen}}, seeds {seeds}, {args.steps} steps of "
          f"{args.batch_size} videos ({data}), lr {args.lr}, {args.eval_samples} held-out videos"
          + (" [--quick: a smoke run, the numbers mean nothing]" if args.quick else ""))
    runs = run_study(loops, seeds, args.steps, args.batch_size, args.eval_samples, args.lr, args.train_videos)
    print()
    for line in table(runs, seeds) + [""] + ratios(runs):
        print(line)
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "seeds": seeds,
                                         "runs": runs}, indent=1))
    if args.plot is not None:
        plot(runs, args.plot, f"loop study: shipped tiny CogVideoX, {args.steps} steps, {len(seeds)} seeds")
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
