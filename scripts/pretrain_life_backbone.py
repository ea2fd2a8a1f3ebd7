#!/usr/bin/env python
"""Pretrain the one-step Game of Life backbone that ships with canvas-core.

    python scripts/pretrain_life_backbone.py                      # the shipped weights (seed 0)
    python scripts/pretrain_life_backbone.py --steps 50 --out /tmp/w   # a quick try

The demo's tiny CogVideoX (2 blocks, 2 heads x 16; 42 K parameters) on a 16 x 16 latent frame
(an 8 x 8 token grid, one token per cell of an 8 x 8 torus), with the torus-neighbourhood canvas
topology installed, learns ONE step of Conway's Game of Life from consecutive board pairs (MSE on
+-1 latents) together with a 4-token prompt. Training stops at a fixed step on purpose: the
backbone is good at one step but not perfect. Nothing is downloaded. The run is deterministic for
``--seed`` on one thread (``--threads 1``, the default): two runs write byte-identical files.
Output in ``--out``: ``config.json``, ``diffusion_pytorch_model.safetensors``,
``prompt.safetensors``, ``pretrain.json`` (options and curve). See ``docs/looping.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="AdamW steps (default: the shipped run's)")
    parser.add_argument("--batch-size", type=int, default=64, help="board pairs per step (default 64)")
    parser.add_argument("--lr", type=float, default=3e-3, help="learning rate after warm-up (default 3e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything (default 0, the shipped weights)")
    parser.add_argument("--eval-every", type=int, default=50, help="held-out evaluation every N steps (default 50)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: reproducible)")
    parser.add_argument("--out", type=Path, default=ROOT / "canvas_core" / "demo" / "weights" / "cogvideox-life",
                        help="output directory (default: the shipped weights in canvas_core/demo/weights)")
    args = parser.parse_args(argv)

    import torch

    from canvas_core.demo.life_pretrain import LifePretrainConfig, pretrain_life
    from canvas_core.errors import CanvasError

    torch.set_num_threads(max(1, args.threads))
    steps = LifePretrainConfig.steps if args.steps is None else args.steps
    cfg = LifePretrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                             eval_every=args.eval_every)
    start = time.perf_counter()
    try:
        _, curve = pretrain_life(cfg, out=args.out, log=print)
    except CanvasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s "
          f"(held-out one-step exact boards {curve[0][2]:.3f} -> {curve[-1][2]:.3f}, cells {curve[-1][3]:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
