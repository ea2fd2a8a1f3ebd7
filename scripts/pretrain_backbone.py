#!/usr/bin/env python
"""Pretrain the demo's tiny CogVideoX backbone and write the weights that ship with canvas-core.

    python scripts/pretrain_backbone.py                 # the shipped weights: seed 0, 3000 steps
    python scripts/pretrain_backbone.py --steps 50 --out /tmp/w --no-plot   # a quick try

The tiny ``CogVideoXTransformer3DModel`` (2 blocks, 2 heads x 16, 4 latent channels; about 42 K
parameters) learns, together with a 4-token prompt, to denoise latent videos of moving Gaussian
blobs; in half of them one frame is pure noise and must be restored from the motion seen in the
other frames. No action or reward label is used. Nothing is downloaded. The run is
deterministic for ``--seed`` (single-threaded by default, so that the file is the same on every
machine with the same torch build). Output: ``config.json``, ``diffusion_pytorch_model.safetensors``,
``prompt.safetensors`` and ``pretrain.json`` (options and training curve) in ``--out``, and a plot of
the curve (``--plot``). See ``docs/demo.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="AdamW steps (default 3000)")
    parser.add_argument("--batch-size", type=int, default=32, help="videos per step (default 32)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3; warm-up, cosine decay)")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything (default 0, the shipped weights)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: reproducible)")
    parser.add_argument("--out", type=Path, default=ROOT / "canvas_core" / "demo" / "weights" / "cogvideox-blob",
                        help="output directory (default: the shipped weights in canvas_core/demo/weights)")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "pretrain_curve.png",
                        help="png of the training curve (default docs/pretrain_curve.png)")
    parser.add_argument("--no-plot", action="store_true", help="write no plot")
    args = parser.parse_args(argv)

    import torch

    from canvas_core.demo.pretrain import PretrainConfig, pretrain_cogvideox
    from canvas_core.errors import CanvasError

    torch.set_num_threads(max(1, args.threads))
    cfg = PretrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         warmup=min(100, max(1, args.steps // 10)))
    start = time.perf_counter()
    try:
        _, curve = pretrain_cogvideox(cfg, out=args.out, log=print)
    except CanvasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s "
          f"(held-out denoising loss {curve[0][2]:.4f} -> {curve[-1][2]:.4f})")
    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([s for s, _, _ in curve[1:]], [t for _, t, _ in curve[1:]], label="training (mean of 50 steps)")
        ax.plot([s for s, _, _ in curve], [h for _, _, h in curve], "o-", ms=3, label="256 held-out videos")
        ax.set_xlabel("step")
        ax.set_ylabel("denoising MSE")
        ax.set_yscale("log")
        ax.set_title(f"pretraining the demo's tiny CogVideoX (seed {args.seed})")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
