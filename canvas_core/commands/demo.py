"""``canvas demo``: the end-to-end main job (see ``docs/demo.md``).

Declares a typed program (video frames, action, reward) on a backbone's token grid, compiles it
(printing the resolution report), grafts looped attention onto the frozen pretrained backbone
shipped with canvas-core, trains the loop parameters and an action head on a procedural
moving-blob task with a progress bar, compares on held-out videos with the frozen backbone at one
loop and with the same backbone unfrozen (same step budget), saves the loop checkpoint and draws
the canvas.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="cogvideox", help="backbone plugin: cogvideox (default), mochi, vit")
    parser.add_argument("--loops", type=int, default=3, help="loop count of the graft (default 3)")
    parser.add_argument("--steps", type=int, default=600, help="training steps per model (default 600)")
    parser.add_argument("--batch-size", type=int, default=16, help="videos per training step (default 16)")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (default 3e-3)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything (default 0)")
    parser.add_argument("--out", type=Path, default=Path("canvas_demo_out"), help="output folder")
    parser.add_argument("--pretrained", type=Path, default=None,
                        help="local from_pretrained directory of the backbone (real use, e.g. on a GPU)")
    parser.add_argument("--random-init", action="store_true",
                        help="a tiny backbone with random weights instead of the shipped pretrained one")
    parser.add_argument("--train-videos", type=int, default=None,
                        help="train on a fixed set of this many labelled videos (default: a fresh video per sample)")
    parser.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from canvas_core.demo.pipeline import DemoConfig, run_demo

    quick = args.quick  # caps steps / batch / eval set; bad values still reach the checks
    cfg = DemoConfig(backbone=args.backbone, loops=args.loops, steps=min(4, args.steps) if quick else args.steps,
                     batch_size=min(4, args.batch_size) if quick else args.batch_size, lr=args.lr,
                     eval_samples=16 if quick else 256, device=args.device, seed=args.seed,
                     out=args.out, pretrained=args.pretrained, progress=not args.no_progress,
                     random_init=args.random_init, train_videos=args.train_videos)
    run_demo(cfg)
    return 0
