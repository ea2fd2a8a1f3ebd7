"""Train a small canvas transformer, on one process or many (torchrun / DDP).

One process (CPU or one GPU)::

    python examples/train_canvas.py --steps 200

Several processes, one per GPU (or several CPU processes with gloo)::

    torchrun --nproc_per_node=2 examples/train_canvas.py --steps 200          # DDP
    torchrun --nproc_per_node=2 examples/train_canvas.py --steps 200 --fsdp   # FSDP2
    torchrun --nproc_per_node=4 examples/train_canvas.py --sequence-parallel 2  # 2 x 2 (SP x DP)

The model is plain PyTorch: a ``SpatiotemporalCanvas`` embedding, a stack of pre-norm blocks whose
attention is an ``AttentionDispatcher`` running the canvas topology, and a linear read-out. Each
process trains on its own shard of a synthetic task -- predict the next frame of drifting sinusoid
"video" tokens and the action that drives the drift -- and DDP (or FSDP2's ``fully_shard``)
averages the gradients. The loss
uses the layout's per-position loss weights. ``--compile`` compiles each block once with
``torch.compile`` and reuses it for every block (``canvas_core.compile_blocks``, regional
compilation: compile time stays that of one block whatever the depth); ``--compile whole``
compiles the whole model instead.

``--sequence-parallel N`` splits each canvas over N processes (world size = N x data-parallel
degree): the N ranks of a group train on the same samples, each holding a share of the canvas
positions, and the attention layers exchange heads with all-to-alls
(``canvas_core.parallelize_canvas``, docs/distributed.md). The printed losses equal the ones of the
same run with N times fewer processes.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from canvas_core import (
    AttentionDispatcher,
    CanvasLayout,
    CanvasTopology,
    RegionSpec,
    SpatiotemporalCanvas,
    compile_blocks,
    parallelize_canvas,
    sequence_parallel_mesh,
    shard_canvas,
)


def build_layout(T: int, d_model: int) -> CanvasLayout:
    """T frames of a 6 x 8 grid: 5 x 8 video patches, a 1 x 4 action and a 1 x 4 reward row."""
    return CanvasLayout(T=T, H=6, W=8, d_model=d_model, regions={
        "video": (0, T, 0, 5, 0, 8),
        "action": RegionSpec((0, T, 5, 6, 0, 4), loss_weight=2.0),
        "reward": RegionSpec((0, T, 5, 6, 4, 8), is_output=False),
    })


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``, ``(B, N, D)``."""

    def __init__(self, topology: CanvasTopology, layout: CanvasLayout, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = AttentionDispatcher(topology, layout, d_model, n_heads)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn.delta(h)  # the change the canvas layer makes (its forward returns the state)
        return x + self.mlp(self.norm2(x))


class CanvasModel(nn.Module):
    """``(B, N_video, D_in)`` video tokens -> ``(B, N, D_in)`` predictions on the whole canvas."""

    def __init__(self, layout: CanvasLayout, d_in: int, depth: int, n_heads: int) -> None:
        super().__init__()
        D = layout.d_model
        self.canvas = SpatiotemporalCanvas(layout)
        self.inp = nn.Linear(d_in, D)
        topology = CanvasTopology.causal_temporal(list(layout.regions))
        self.blocks = nn.ModuleList(Block(topology, layout, D, n_heads) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, d_in))
        self.sharding = self.sp_group = None

    def sequence_parallel(self, group) -> None:
        """Run on a share of the canvas from the embedding on; the output is this rank's share."""
        self.sharding, self.sp_group = parallelize_canvas(self, group), group

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's share of a whole-canvas tensor ``(B, N, ...)`` (the tensor itself without SP)."""
        return x if self.sharding is None else shard_canvas(x, self.sharding, self.sp_group)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = self.canvas.place(self.canvas.create_empty(video.shape[0]), self.inp(video), "video")
        x = self.shard(x)  # every later layer is position-wise or a (sequence-parallel) canvas attention
        for block in self.blocks:
            x = block(x)
        return self.out(x)


def make_batch(layout: CanvasLayout, batch: int, d_in: int, generator: torch.Generator):
    """Drifting sinusoids: the input is frames 0..T-1, the target every position one frame later."""
    T, H, W = layout.T, 5, 8
    phase = torch.rand(batch, 1, 1, 1, generator=generator) * 2 * math.pi
    speed = torch.rand(batch, 1, 1, 1, generator=generator) * 0.6 + 0.2
    t = torch.arange(T + 1).view(1, -1, 1, 1).float()
    y = torch.arange(H).view(1, 1, -1, 1).float()
    xs = torch.arange(W).view(1, 1, 1, -1).float()
    freq = torch.arange(1, d_in + 1).float() / d_in
    wave = torch.sin((xs + y + speed * t * 4 + phase).unsqueeze(-1) * freq)  # (B, T+1, H, W, d_in)
    video = wave[:, :T].reshape(batch, -1, d_in)
    target = torch.zeros(batch, layout.num_positions, d_in)
    target[:, layout.region_indices("video")] = wave[:, 1:].reshape(batch, -1, d_in)
    target[:, layout.region_indices("action")] = speed.view(batch, 1, 1).expand(
        batch, len(layout.region_indices("action")), d_in)
    return video, target


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=8, help="per process (per sequence-parallel group with --sequence-parallel)")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--compile", nargs="?", const="blocks", default=None, choices=("blocks", "whole"),
                   help="torch.compile: each block once, reused by all (default), or the whole model")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--fsdp", action="store_true", help="shard parameters with FSDP2 (fully_shard) instead of DDP")
    p.add_argument("--sequence-parallel", type=int, default=1, metavar="N",
                   help="processes sharing one canvas (world size = N x data-parallel degree)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps must be at least 1, got {args.steps}")

    distributed = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.sequence_parallel > 1 and not distributed:
        p.error(f"--sequence-parallel {args.sequence_parallel} splits each canvas over that many processes: "
                f"start them with torchrun, e.g. torchrun --nproc_per_node={args.sequence_parallel} "
                "examples/train_canvas.py --sequence-parallel " + str(args.sequence_parallel))
    rank, world = 0, 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if distributed:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)

    sp, dp_rank = args.sequence_parallel, rank
    torch.manual_seed(args.seed)  # the same initial weights on every process
    layout = build_layout(args.frames, args.d_model)
    d_in = 8
    model = CanvasModel(layout, d_in, args.depth, args.heads).to(device)
    if sp > 1:  # checks the sizes on every rank first (CanvasError, no hang)
        mesh = sequence_parallel_mesh(sp, device.type)
        model.sequence_parallel(mesh["sp"].get_group())
        dp_rank = mesh["dp"].get_local_rank()
    if args.compile == "blocks":  # before wrapping: DDP / FSDP then see the compiled blocks
        compile_blocks(model, backend=args.compile_backend)
    if distributed and args.fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:  # one all-gather per block, then the rest of the model
            fully_shard(block)
        train_model = fully_shard(model)
    else:
        train_model = DistributedDataParallel(model) if distributed else model
    if args.compile == "whole":
        train_model = torch.compile(train_model, backend=args.compile_backend)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    weights = layout.loss_weight_mask(device).view(1, -1, 1)
    norm = weights.sum().double() * args.batch * d_in  # of the whole canvas
    weights = model.shard(weights)
    gen = torch.Generator().manual_seed(args.seed * 1000 + dp_rank)  # a different shard per data-parallel rank

    start, first, loss = time.perf_counter(), None, torch.zeros(())
    for step in range(args.steps):
        video, target = make_batch(layout, args.batch, d_in, gen)
        pred = train_model(video.to(device))
        # float64 sum: the same printed loss whether the canvas is whole or summed over shares
        loss = ((pred - model.shard(target.to(device))).square() * weights).double().sum() / norm
        opt.zero_grad(set_to_none=True)
        # DDP / FSDP average gradients over all sp x dp ranks; the sp shares' gradients must add up
        (loss * sp if sp > 1 else loss).backward()
        opt.step()
        if sp > 1:  # the whole canvas's loss, for printing
            loss = loss.detach()
            dist.all_reduce(loss, group=model.sp_group)
        first = loss.item() if first is None else first
        if rank == 0 and (step % 50 == 0 or step == args.steps - 1):  # rank 0's loss (the summary: all ranks')
            print(f"step {step:4d}  loss {loss.item():.4f}", flush=True)
    final = loss.detach().clone()
    if distributed:
        dist.all_reduce(final)
        final /= world
    if rank == 0:
        mean = " (mean over the processes)" if distributed else ""
        print(f"done: {args.steps} steps on {world} process(es), {device}, "
              f"loss {first:.4f} -> {final.item():.4f}{mean} in {time.perf_counter() - start:.1f} s", flush=True)
    if distributed:
        # DDP's reducer and the sequence-parallel layers hold the process groups: drop them first,
        # so that destroy_process_group really tears gloo down now and not during interpreter exit
        # (where gloo's worker threads can abort the process).
        del model, train_model, opt
        mesh = None  # noqa: F841 (a DeviceMesh holds its groups too)
        gc.collect()
        dist.barrier()  # every rank is done with the process group before any tears it down
        dist.destroy_process_group()
    return float(final)


if __name__ == "__main__":
    main()
