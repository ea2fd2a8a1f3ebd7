"""``canvas demo``: the end-to-end main job (see ``docs/demo.md``).

Default task (``--task life``): the frozen tiny CogVideoX shipped with canvas-core, pretrained on
ONE step of Conway's Game of Life, is looped as a step map and trained (loop parameters and a
17-parameter head) to predict the board k steps ahead; a table compares it, at the same small
budget, with the explicit rollout, the frozen backbone at one loop, a span loop and the unfrozen
backbone, and gives the iterations adaptive exit uses.

``--task blob``: declares a typed program (video frames, action, reward) on a backbone's token grid,
compiles it (printing the resolution report), grafts looped attention onto the frozen pretrained
backbone, trains loops and an action head on a procedural moving-blob task, compares with the
frozen backbone at one loop and with the same backbone unfrozen, saves the loop checkpoint and
draws the canvas.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from canvas_core.commands._output import input_path, output_folder

_BLOB_ONLY = ("backbone", "loops", "pretrained", "random_init", "train_videos")
_DEFAULTS = {"life": {"steps": 30, "batch_size": 16}, "blob": {"steps": 600, "batch_size": 16, "lr": 3e-3}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="life", choices=("life", "blob"),
                        help="life (default): k-step Game of Life from a one-step backbone; blob: the moving-blob job")
    parser.add_argument("--ks", default="2,4,8", help="life: steps ahead to predict, comma-separated (default 2,4,8)")
    parser.add_argument("--backbone", default=None, help="blob: backbone plugin: cogvideox (default), mochi, vit")
    parser.add_argument("--loops", type=int, default=None, help="blob: loop count of the graft (default 3)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per model (default: life 30, blob 600)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="samples per training step (default: life 16 boards, blob 16 videos)")
    parser.add_argument("--lr", type=float, default=None,
                        help="AdamW learning rate (default: life one per condition, blob 3e-3)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything (default 0)")
    parser.add_argument("--out", type=output_folder, default=Path("canvas_demo_out"), help="output folder")
    parser.add_argument("--pretrained", type=input_path, default=None,
                        help="blob: local from_pretrained directory of the backbone (real use, e.g. on a GPU)")
    parser.add_argument("--random-init", action="store_true", default=None,
                        help="blob: a tiny backbone with random weights instead of the shipped pretrained one")
    parser.add_argument("--train-videos", type=int, default=None,
                        help="blob: train on a fixed set of this many labelled videos (default: a fresh video per sample)")
    parser.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


#: files the demo writes into --out, per task
_WRITES = {"life": ("loops.safetensors", "canvas.png"), "blob": ("schema.json", "loops.safetensors", "canvas.png")}


def _check_out(out: Path, task: str) -> None:
    """Refuse an --out the demo could not write its files to (a read-only folder, a file where
    the folder should be, a read-only or directory ``canvas.png`` in it) before anything is
    trained, not after minutes of training; nothing is created here."""
    from canvas_core._safe_write import check_write_target

    for name in _WRITES[task]:
        check_write_target(out / name, f"the demo's {name} (--out {str(out)!r})", make_parents=True)


def _chosen(given, default):
    """An option's value: what the command line gave, else the default (``--quick``'s or the
    task's)."""
    return default if given is None else given


def run(args: argparse.Namespace) -> int:
    if getattr(args, "task", "blob") == "life":
        return _run_life(args)
    from canvas_core.demo.pipeline import DemoConfig, run_demo

    d = _DEFAULTS["blob"]
    quick = args.quick  # small defaults; options given explicitly win (and reach the checks)
    steps = _chosen(args.steps, 4 if quick else d["steps"])
    batch = _chosen(args.batch_size, 4 if quick else d["batch_size"])
    cfg = DemoConfig(backbone=args.backbone or "cogvideox", loops=3 if args.loops is None else args.loops,
                     steps=steps, batch_size=batch,
                     lr=d["lr"] if args.lr is None else args.lr,
                     eval_samples=16 if quick else 256, device=args.device, seed=args.seed,
                     out=args.out, pretrained=args.pretrained, progress=not args.no_progress,
                     random_init=bool(args.random_init), train_videos=args.train_videos)
    _check_out(Path(args.out), "blob")
    run_demo(cfg)
    return 0


def _run_life(args: argparse.Namespace) -> int:
    from canvas_core.demo.life_demo import LifeDemoConfig, run_life_demo
    from canvas_core.errors import CanvasError

    given = [f"--{name.replace('_', '-')}" for name in _BLOB_ONLY if getattr(args, name, None) is not None]
    if given:
        raise CanvasError(f"{', '.join(given)} applies to the moving-blob task only; add --task blob "
                          "(the default task, life, always uses the shipped Game of Life backbone)")
    if args.device != "cpu":
        raise CanvasError(f"--device {args.device}: the Game of Life comparison runs on the CPU (about 2 minutes); "
                          "--device applies to --task blob")
    try:
        ks = tuple(sorted({int(x) for x in str(args.ks).split(",") if x.strip()}))
    except ValueError:
        raise CanvasError(f"--ks must be comma-separated integers, e.g. 2,4; got {args.ks!r}") from None
    quick = args.quick  # small defaults; options given explicitly win (and reach the checks)
    steps = _chosen(args.steps, 3 if quick else _DEFAULTS["life"]["steps"])
    batch = _chosen(args.batch_size, 8 if quick else _DEFAULTS["life"]["batch_size"])
    cfg = LifeDemoConfig(ks=ks, steps=steps, batch_size=batch,
                         lr=args.lr, test_boards=32 if quick else 384, seed=args.seed, out=args.out,
                         progress=not args.no_progress)
    _check_out(Path(args.out), "life")
    run_life_demo(cfg)
    return 0
