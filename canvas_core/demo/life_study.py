"""The conditions of the Game of Life loop study (``benchmarks/loop_study.py``, ``canvas demo``):
predict the board ``k`` steps ahead from the shipped one-step backbone.

Every trained condition reads the model's output frame with the same :class:`LifeHead` (started
at the plain decode) and trains with binary cross-entropy on the cells of the ``k``-step board.
Within one seed every condition sees the same boards in the same order.

==========  =====================================================================================
kind        what trains, and how the ``k`` steps are reached
==========  =====================================================================================
rollout     nothing: the one-step model applied ``k`` times, decoded to 0/1 between steps (the bound)
model       frozen backbone, ``scope="model"``: ``k`` loops re-entering through a trainable
            :class:`LifeReentry` (decode + re-encode), gates at 1, a gated channel adapter; it starts
            exactly at the rollout; loop parameters (reentry included) + head train
stack       frozen backbone, ``scope="stack"`` (both blocks as one core, input added back through a
            zero gate), ``k`` loops; loop parameters + head (starts at the one-step output)
block       frozen backbone, ``scope="block"`` (each block looped ``k`` times on its own)
frozen1     frozen backbone grafted as ``model`` but run at 1 loop (same trainable parameters)
unfrozen    every backbone parameter + head, one pass
deeper      every parameter + head of a ``2k``-block copy (the pretrained blocks repeated), one pass
==========  =====================================================================================
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from canvas_core.demo.life import (COGVIDEOX_LIFE, LifeBatch, LifeHead, LifeReentry, LifeTask, decode, encode,
                                   life_inputs, rollout)
from canvas_core.demo.life_pretrain import install_life_topology

__all__ = ["KINDS", "LOOPED", "LifeArm", "make_arm", "train_life_arm", "predict", "score", "rollout_scores",
           "StudyData", "study_data"]

KINDS: Dict[str, str] = {
    "rollout": "explicit rollout (no training)",
    "model": "frozen + loops, scope='model'",
    "stack": "frozen + loops, scope='stack'",
    "block": "frozen + loops, scope='block'",
    "frozen1": "frozen, 1 loop",
    "unfrozen": "unfrozen, 1 pass",
    "deeper": "unfrozen, 2k blocks",
}
#: kinds whose loop count can be changed after training (test-time depth)
LOOPED = ("model", "stack")


@dataclass
class LifeArm:
    """One trainable condition: the model, its head, what the optimiser sees, its loop count."""

    kind: str
    k: int
    model: nn.Module
    head: LifeHead
    loops: int
    trainable: int
    losses: List[float] = field(default_factory=list)
    seconds: float = 0.0

    def parameters(self) -> List[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.head.parameters())

    def set_loops(self, n: int, exit_tol: float = 0.0) -> None:
        from canvas_core import set_loops

        if self.kind in ("model", "stack", "block", "frozen1"):
            set_loops(self.model, n, exit_tol)


def _deeper(backbone: nn.Module, k: int) -> nn.Module:
    """A ``2k``-block CogVideoX whose blocks are the backbone's, repeated in order."""
    from diffusers import CogVideoXTransformer3DModel

    n = len(backbone.transformer_blocks)
    model = CogVideoXTransformer3DModel(**{**COGVIDEOX_LIFE, "num_layers": n * k})
    state = {}
    for key, value in backbone.state_dict().items():
        if key.startswith("transformer_blocks."):
            _, i, rest = key.split(".", 2)
            for r in range(k):
                state[f"transformer_blocks.{int(i) + r * n}.{rest}"] = value
        else:
            state[key] = value
    model.load_state_dict(state)
    model.demo_prompt = backbone.demo_prompt
    return model.eval()


def make_arm(backbone: nn.Module, kind: str, k: int, seed: int) -> LifeArm:
    """A fresh copy of the plain ``backbone`` prepared for ``kind`` at ``k`` steps (topology
    installed), with a :class:`LifeHead` (the same start in every arm).  Everything random in it
    (grafted loop parts, reentry, adapters, head) is drawn from ``seed``, whatever ran before, so
    ``canvas demo`` and ``benchmarks/loop_study.py`` build the same arm for the same seed."""
    from canvas_core import graft_looped_blocks

    if kind not in KINDS or kind == "rollout":
        raise ValueError(f"unknown trainable kind {kind!r}")
    torch.manual_seed(seed)
    model = _deeper(backbone, k) if kind == "deeper" else copy.deepcopy(backbone)
    loops = 1
    common = dict(action_dim=1, use_gradient_checkpointing=False)
    if kind in ("model", "frozen1"):
        graft_looped_blocks(model, max_loops=max(2, k), freeze="full", scope="model",
                            reenter=LifeReentry(int(COGVIDEOX_LIFE["in_channels"])),
                            step_adapter="gated", gate_init_bias=1.0, **common)
        loops = k if kind == "model" else 1
    elif kind == "stack":
        graft_looped_blocks(model, max_loops=max(2, k), freeze="full", scope="stack", inject="add", **common)
        loops = k
    elif kind == "block":
        graft_looped_blocks(model, max_loops=max(2, k), freeze="full", scope="block", **common)
        loops = k
    else:
        model.requires_grad_(True)
    install_life_topology(model)
    torch.manual_seed(seed + 1)
    head = LifeHead(int(COGVIDEOX_LIFE["in_channels"]))
    arm = LifeArm(kind, k, model, head, loops, 0)
    arm.trainable = sum(p.numel() for p in arm.parameters())
    arm.set_loops(loops)
    return arm


def _frame(arm: LifeArm, board: torch.Tensor) -> torch.Tensor:
    x = encode(board, int(COGVIDEOX_LIFE["in_channels"]))
    return arm.model(**life_inputs(arm.model, x)).sample


def train_life_arm(arm: LifeArm, task: LifeTask, steps: int, batch_size: int, lr: float, seed: int,
                   checkpoints: Sequence[int] = (), on_checkpoint: Optional[Callable[[int], None]] = None,
                   progress: Optional[Callable] = None) -> List[float]:
    """``steps`` AdamW steps on fresh boards (order fixed by ``seed``) towards the ``k``-step
    board; ``on_checkpoint(step)`` is called after each step listed in ``checkpoints``."""
    gen = torch.Generator().manual_seed(seed + 100)
    opt = torch.optim.AdamW(arm.parameters(), lr=lr, weight_decay=0.0)
    start = time.perf_counter()
    arm.model.train()
    arm.head.train()
    it = range(steps) if progress is None else progress(range(steps), steps)
    for step in it:
        batch = task.sample(batch_size, gen)
        logits = arm.head(_frame(arm, batch.start))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.target(arm.k).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        arm.losses.append(loss.item())
        if hasattr(it, "set_postfix"):
            it.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if step + 1 in checkpoints and on_checkpoint is not None:
            arm.seconds += time.perf_counter() - start
            on_checkpoint(step + 1)
            arm.model.train()
            arm.head.train()
            start = time.perf_counter()
    arm.seconds += time.perf_counter() - start
    arm.model.eval()
    arm.head.eval()
    return arm.losses


@torch.no_grad()
def predict(arm: LifeArm, boards: torch.Tensor, loops: Optional[int] = None, exit_tol: float = 0.0):
    """Predicted boards ``(B, S, S)`` (and the mean iterations used, ``None`` for one-pass arms)
    at ``loops`` iterations (default: the trained count)."""
    from canvas_core import loop_counts

    arm.model.eval()
    arm.head.eval()
    arm.set_loops(arm.loops if loops is None else loops, exit_tol)
    preds, iters = [], []
    for i in range(0, boards.shape[0], 128):
        preds.append((arm.head(_frame(arm, boards[i:i + 128])) > 0).long())
        if arm.kind in LOOPED:
            iters.append(loop_counts(arm.model).float())
    arm.set_loops(arm.loops)
    return torch.cat(preds), (torch.cat(iters).mean().item() if iters else None)


def score(pred: torch.Tensor, target: torch.Tensor) -> Dict[str, float]:
    """``exact``: fraction of boards with every cell right; ``cell_error``: fraction of wrong cells."""
    return {"exact": (pred == target).flatten(1).all(1).float().mean().item(),
            "cell_error": (pred != target).float().mean().item()}


@torch.no_grad()
def rollout_scores(backbone: nn.Module, batch: LifeBatch, n_max: int, ks: Sequence[int] = ()) -> List[Dict[str, float]]:
    """Scores of the explicit rollout after ``n = 1 .. n_max`` steps (one incremental rollout;
    ``backbone`` has the topology installed): against the ``n``-step boards where the batch has
    them, and ``"vs<k>"``, the exact accuracy against the ``k``-step board, for every ``k`` in ``ks``."""
    out, board = [], batch.start
    k_max = batch.boards.shape[1] - 1
    for n in range(1, n_max + 1):
        board = torch.cat([decode(rollout(backbone, board[i:i + 256], 1)) for i in range(0, board.shape[0], 256)])
        row = score(board, batch.target(n)) if n <= k_max else {}
        row.update({f"vs{k}": score(board, batch.target(k))["exact"] for k in ks})
        out.append(row)
    return out


@dataclass
class StudyData:
    """The boards of one seed: ``test`` (reported), ``val`` (learning-rate choice)."""

    task: LifeTask
    test: LifeBatch
    val: LifeBatch


def study_data(seed: int, test: int, val: int, k_max: int = 8) -> StudyData:
    task = LifeTask(k_max=k_max)
    return StudyData(task, task.sample(test, torch.Generator().manual_seed(seed + 10_000)),
                     task.sample(val, torch.Generator().manual_seed(seed + 20_000)))
