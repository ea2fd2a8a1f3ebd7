"""One experimental condition of the blob demo and of ``benchmarks/loop_study.py --task blob``: graft ``loops``
loops onto a copy of the backbone, frozen (loop parameters and head train) or unfrozen (everything
trains), train on the blob task for a fixed step budget and measure the held-out errors.

Every condition of one seed sees the same training videos in the same order, the same head
initialisation and the same held-out videos; only the loop count and what is trainable differ.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from canvas_core.demo.backbones import DemoBackbone, model_inputs
from canvas_core.demo.program import declare_program
from canvas_core.demo.task import BlobBatch, BlobTask

__all__ = ["Condition", "Arm", "TrainOptions", "DemoHead", "Setup", "prepare", "run_condition", "graft_condition", "train_arm", "evaluate_arm",
           "errors", "targets", "training_pool"]


@dataclass(frozen=True)
class Condition:
    """``loops`` loops per block, backbone ``frozen`` (loops + head train) or not (all train)."""

    loops: int
    frozen: bool = True

    @property
    def name(self) -> str:
        return f"{'frozen' if self.frozen else 'unfrozen'}, {self.loops} loop{'s' if self.loops != 1 else ''}"


@dataclass
class TrainOptions:
    """Optimisation of one arm: ``steps`` AdamW steps of ``batch_size`` videos at ``lr``; videos drawn
    from a fixed pool of ``train_videos`` (``None``: a fresh video every time); ``seed`` fixes the
    data order, the head initialisation and the prompt embeddings."""

    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = 0
    device: str = "cpu"
    train_videos: Optional[int] = None
    progress: bool = False


@dataclass
class Arm:
    """A grafted, trainable copy of the backbone for one :class:`Condition`."""

    condition: Condition
    model: nn.Module
    blocks: Any
    head: nn.Module
    loop_params: int
    trainable: int
    losses: List[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.condition.name

    def parameters(self) -> List[nn.Parameter]:
        """What the optimiser updates: the trainable backbone/loop parameters and the head."""
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.head.parameters())


class DemoHead(nn.Module):
    """Action head of the demo: ``(B, ...) -> (B, action_dim)``, batch norm and an MLP on the
    flattened features the backbone recipe reads out (for CogVideoX the final hidden states of the
    action and reward prompt tokens; for Mochi the whole output video, for ViT every token). The
    batch norm puts the small video-dependent variation of frozen features on a usable scale."""

    def __init__(self, in_features: int, action_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.BatchNorm1d(in_features), nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, action_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1).float())


def graft_condition(backbone: nn.Module, condition: Condition, schema: Any, tokens: Any, in_features: int,
                    action_dim: int, seed: int, device: str = "cpu") -> Arm:
    """A deep copy of ``backbone`` with ``condition.loops`` loops grafted (``freeze="full"`` or
    ``"none"``), the demo's topology installed in every block and a fresh :class:`DemoHead`
    (initialised from ``seed``, identical for every condition)."""
    from canvas_core import graft_looped_blocks
    from canvas_core.looping import get_adapter

    model = copy.deepcopy(backbone)
    # per-loop activation checkpointing only pays for itself on a large backbone (memory); the tiny
    # demo model trains a third faster without the recomputation
    big = sum(p.numel() for p in model.parameters()) > 10_000_000
    blocks, _ = graft_looped_blocks(model, max_loops=condition.loops, freeze="full" if condition.frozen else "none",
                                    action_dim=action_dim, schema=schema, use_gradient_checkpointing=big)
    torch.manual_seed(seed + 1)  # the same head initialisation in every arm
    head = DemoHead(in_features, action_dim)
    get_adapter(model).install_topology(model, schema.topology, tokens.with_layout(schema.layout))
    loop_params = sum(p.numel() for b in blocks for p in b.loop_parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) + sum(p.numel() for p in head.parameters())
    return Arm(condition, model.to(device), blocks, head.to(device), loop_params, trainable)


def targets(batch: BlobBatch, with_reward: bool) -> torch.Tensor:
    return torch.cat([batch.action, batch.reward], 1) if with_reward else batch.action


def training_pool(task: BlobTask, opts: TrainOptions) -> Optional[BlobBatch]:
    """The fixed training videos (``opts.train_videos`` of them), or ``None`` for fresh videos."""
    if opts.train_videos is None:
        return None
    return task.sample(opts.train_videos, torch.Generator().manual_seed(opts.seed + 100))


def _batches(task: BlobTask, pool: Optional[BlobBatch], opts: TrainOptions):
    gen = torch.Generator().manual_seed(opts.seed + 100)
    if pool is not None:
        gen.manual_seed(opts.seed + 200)
    for _ in range(opts.steps):
        if pool is None:
            yield task.sample(opts.batch_size, gen)
        else:
            idx = torch.randint(0, pool.video.shape[0], (opts.batch_size,), generator=gen)
            yield BlobBatch(video=pool.video[idx], action=pool.action[idx], reward=pool.reward[idx],
                            start=pool.start[idx])


def train_arm(arm: Arm, recipe: DemoBackbone, task: BlobTask, opts: TrainOptions, with_reward: bool,
              pool: Optional[BlobBatch] = None, progress: Optional[Callable] = None) -> List[float]:
    """Train ``arm`` for ``opts.steps`` steps (a 1 -> ``loops`` curriculum); returns the losses."""
    from canvas_core import CurriculumScheduler

    start = time.perf_counter()
    opt = torch.optim.AdamW(arm.parameters(), lr=opts.lr)
    sched = CurriculumScheduler(max_loops=arm.condition.loops, total_steps=max(1, opts.steps))
    arm.model.train()
    steps = enumerate(_batches(task, pool, opts))
    bar = progress(steps, opts.steps) if progress is not None else steps
    for step, batch in bar:
        sched.step(arm.blocks, step)
        kwargs = model_inputs(recipe, arm.model, batch.video, opts.seed, opts.device)
        pred = arm.head(recipe.output(arm.model, kwargs))
        loss = torch.nn.functional.mse_loss(pred, targets(batch, with_reward).to(opts.device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        arm.losses.append(loss.item())
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss.item():.4f}", loops=sched.get_loops(step), refresh=False)
    arm.seconds = time.perf_counter() - start
    return arm.losses


@torch.no_grad()
def evaluate_arm(arm: Arm, recipe: DemoBackbone, batch: BlobBatch, opts: TrainOptions) -> torch.Tensor:
    """Predictions ``(B, 2 or 3)`` of ``arm`` at its full loop count for ``batch``."""
    arm.model.eval()
    for b in arm.blocks:
        b.set_loops(arm.condition.loops)
    preds = []
    for i in range(0, batch.video.shape[0], 64):
        kwargs = model_inputs(recipe, arm.model, batch.video[i:i + 64], opts.seed, opts.device)
        preds.append(arm.head(recipe.output(arm.model, kwargs)).float().cpu())
    return torch.cat(preds)


def errors(pred: torch.Tensor, batch: BlobBatch) -> Dict[str, float]:
    """Velocity (action) MSE and, when predicted, reward MSE."""
    mse = torch.nn.functional.mse_loss
    out = {"action": mse(pred[:, :2], batch.action).item()}
    if pred.shape[1] > 2:
        out["reward"] = mse(pred[:, 2:], batch.reward).item()
    return out


@dataclass
class Setup:
    """What every condition of one backbone shares: its token grid, the demo's program on it, the
    task sized for the backbone, the head's input size and whether a reward is predicted."""

    tokens: Any
    program: Any
    task: BlobTask
    in_features: int
    with_reward: bool

    @property
    def schema(self) -> Any:
        return self.program.schema

    @property
    def action_dim(self) -> int:
        return 3 if self.with_reward else 2


def prepare(recipe: DemoBackbone, backbone: nn.Module, seed: int = 0) -> Setup:
    """Read the backbone's token grid (on a grafted scratch copy), declare the demo's program on
    it and size the task and head for it."""
    from canvas_core import graft_looped_blocks
    from canvas_core.looping import get_adapter

    frames, height, width = recipe.video_shape(backbone)  # whole patches of a pretrained model too
    task = BlobTask(frames=frames, channels=recipe.channels(backbone), height=height, width=width)
    probe = task.sample(2, torch.Generator().manual_seed(seed))
    scratch = copy.deepcopy(backbone)
    graft_looped_blocks(scratch, max_loops=1, freeze="full", action_dim=2)
    tokens = get_adapter(scratch).token_layout(scratch, model_inputs(recipe, scratch, probe.video, seed))
    del scratch
    program = declare_program(tokens, recipe)
    with torch.no_grad():
        in_features = recipe.output(backbone, model_inputs(recipe, backbone, probe.video, seed))[0].numel()
    return Setup(tokens, program, task, in_features, "reward" in program.schema.layout.regions)


def run_condition(recipe: DemoBackbone, backbone: nn.Module, setup: Setup, condition: Condition,
                  opts: TrainOptions, held_out: BlobBatch, progress: Optional[Callable] = None) -> Dict[str, Any]:
    """Graft, train and evaluate one condition; returns its row (name, loops, frozen, trainable,
    loop_params, action / reward error, final loss, seconds) and the trained ``arm``."""
    arm = graft_condition(backbone, condition, setup.schema, setup.tokens, setup.in_features, setup.action_dim,
                          opts.seed, opts.device)
    train_arm(arm, recipe, setup.task, opts, setup.with_reward, training_pool(setup.task, opts), progress)
    err = errors(evaluate_arm(arm, recipe, held_out, opts), held_out)
    return {"name": condition.name, "loops": condition.loops, "frozen": condition.frozen,
            "trainable": arm.trainable, "loop_params": arm.loop_params, **err,
            "final_loss": arm.losses[-1] if arm.losses else float("nan"), "seconds": arm.seconds,
            "losses": arm.losses, "arm": arm}
