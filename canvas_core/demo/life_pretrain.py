"""The one-step Game of Life backbone shipped with canvas-core: its canvas topology, its
pretraining and how to load it.

The tiny CogVideoX of :data:`canvas_core.demo.life.COGVIDEOX_LIFE` cannot find the 8 neighbours of
a cell on the torus from its sinusoidal positions in a few CPU minutes (dense attention stays near
"copy the board"). A canvas topology gives it the world's geometry instead: every video token
attends to its 3 x 3 neighbourhood with wrap-around (a ``MaskSpec(kind="sparse")`` pattern) and to
the prompt tokens, which read everything. With it installed the model learns the step map in
about a thousand steps. The topology is part of the backbone: :func:`install_life_topology` puts
it into a plain or grafted model, and every use of the shipped weights installs it.

``scripts/pretrain_life_backbone.py`` is the command line; its output directory
(``save_pretrained`` files, ``prompt.safetensors``, ``pretrain.json``) ships as
``canvas_core/demo/weights/cogvideox-life``. Training stops early on purpose (see the default
``steps``): the backbone is good at one step but not perfect, so errors can compound over ``k``
steps and looping has a gap to close.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Optional

import torch
from torch import nn

from canvas_core.demo.life import COGVIDEOX_LIFE, LifeTask, build_life_backbone, decode, encode, life_inputs
from canvas_core.errors import CanvasError

__all__ = ["LifePretrainConfig", "life_topology", "install_life_topology", "pretrain_life", "load_life_backbone",
           "LIFE_NAME", "exact_accuracy"]

LIFE_NAME = "cogvideox-life"


@dataclass
class LifePretrainConfig:
    """Options of one pretraining run (the flags of ``scripts/pretrain_life_backbone.py``)."""

    steps: int = 257
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0
    warmup: int = 100
    eval_every: int = 50


def life_topology(size: int = 8):
    """The canvas topology of the board ``size x size``: video -> video on the 3 x 3 torus
    neighbourhood (sparse pattern ``(S*S, S*S)``), video -> text, text -> text, text -> video."""
    from canvas_core.schema import CanvasTopology, Connection
    from canvas_core.schema.mask_spec import MaskSpec

    n = size * size
    pattern = torch.zeros(n, n, dtype=torch.long)
    for y in range(size):
        for x in range(size):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    pattern[y * size + x, ((y + dy) % size) * size + (x + dx) % size] = 1
    return CanvasTopology([Connection("video", "video", mask=MaskSpec(kind="sparse", pattern=pattern.tolist())),
                           Connection("video", "text"), Connection("text", "text"), Connection("text", "video")])


def install_life_topology(model: nn.Module, size: int = 8) -> nn.Module:
    """Install :func:`life_topology` in ``model`` (grafted, or plain: then canvas attention is
    prepared first); returns ``model``."""
    from canvas_core.errors import BackboneError
    from canvas_core.looping import get_adapter
    from canvas_core.looping.registry import find_adapter

    try:
        adapter = get_adapter(model)
    except BackboneError:  # not grafted
        adapter = find_adapter(model)
        if not getattr(model, "_life_prepared", False):
            adapter.prepare(model)
            model._life_prepared = True
    C = int(model.config["in_channels"])
    probe = encode(torch.zeros(1, size, size, dtype=torch.long), C)
    tokens = adapter.token_layout(model, life_inputs(model, probe))
    adapter.install_topology(model, life_topology(size), tokens)
    return model


@torch.no_grad()
def exact_accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of boards ``(B, S, S)`` predicted exactly (every cell right)."""
    return (pred == target).flatten(1).all(1).float().mean().item()


def _check(cfg: LifePretrainConfig) -> None:
    for name in ("steps", "batch_size", "warmup", "eval_every"):
        value = getattr(cfg, name)
        low = 0 if name == "warmup" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise CanvasError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
    if not (isinstance(cfg.lr, (int, float)) and math.isfinite(cfg.lr) and cfg.lr > 0):
        raise CanvasError(f"--lr must be a finite number > 0, got {cfg.lr!r}")


def pretrain_life(cfg: LifePretrainConfig, out: Optional[Path] = None, log: Callable[[str], None] = print):
    """Train the tiny CogVideoX (with the torus topology and a learned 4-token prompt) to map a
    board's latent frame to the next board's (MSE on the +-1 latents); returns ``(model, curve)``.

    Training pairs are consecutive states of random boards (any of the first 8 steps); the
    learning rate warms up for ``cfg.warmup`` steps and then stays constant, so a shorter run is
    exactly the start of a longer one. ``curve``: ``(step, mean training loss since the last
    row, held-out exact one-step accuracy, held-out cell accuracy)`` every ``cfg.eval_every``
    steps (1,000 held-out boards). Deterministic for ``cfg.seed`` on one thread. With ``out``
    the model, its prompt and ``pretrain.json`` are written there.
    """
    _check(cfg)
    model = build_life_backbone(cfg.seed)
    install_life_topology(model)
    task = LifeTask()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    held = task.sample(1000, torch.Generator().manual_seed(cfg.seed + 7777))
    text_shape = (COGVIDEOX_LIFE["max_text_seq_length"], COGVIDEOX_LIFE["text_embed_dim"])
    prompt = nn.Parameter(torch.randn(*text_shape, generator=torch.Generator().manual_seed(cfg.seed + 2)) * 0.5)
    params = list(model.parameters()) + [prompt]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)))

    @torch.no_grad()
    def held_out() -> tuple:
        model.eval()
        pred = torch.cat([decode(model(**life_inputs(model, encode(held.start[i:i + 250]), prompt)).sample)
                          for i in range(0, 1000, 250)])
        model.train()
        return exact_accuracy(pred, held.target(1)), (pred == held.target(1)).float().mean().item()

    curve: List[tuple] = [(0, float("nan"), *held_out())]
    recent: List[float] = []
    model.train()
    for step in range(cfg.steps):
        batch = task.sample(cfg.batch_size, gen)
        j = torch.randint(0, task.k_max, (cfg.batch_size,), generator=gen)
        rows = torch.arange(cfg.batch_size)
        x, y = batch.boards[rows, j], batch.boards[rows, j + 1]
        loss = torch.nn.functional.mse_loss(model(**life_inputs(model, encode(x), prompt)).sample, encode(y))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        recent.append(loss.item())
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            curve.append((step + 1, sum(recent) / len(recent), *held_out()))
            recent = []
            log(f"  step {step + 1:>5}  train loss {curve[-1][1]:.4f}  held-out one-step exact {curve[-1][2]:.3f}"
                f"  cells {curve[-1][3]:.4f}")
    model.eval()
    model.demo_prompt = prompt.detach().clone()
    if out is not None:
        _save(model, Path(out), cfg, curve)
    return model, curve


def _save(model: nn.Module, out: Path, cfg: LifePretrainConfig, curve: List[tuple]) -> None:
    from diffusers import CogVideoXTransformer3DModel

    from canvas_core._safe_write import atomic_write_text
    from canvas_core.checkpoints.tensors import save_safetensors_atomic

    out.mkdir(parents=True, exist_ok=True)
    # the prompt first (a NaN one is refused before anything is written), atomic writes: an
    # interrupted save leaves the previous files (canvas_core/_safe_write.py)
    save_safetensors_atomic({"prompt": model.demo_prompt.detach().contiguous()}, out / "prompt.safetensors", None,
                            "the Life demo prompt")
    plain = CogVideoXTransformer3DModel(**COGVIDEOX_LIFE)  # the same weights without canvas attention
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(str(out), safe_serialization=True)
    meta = {"task": "one Game of Life step on an 8 x 8 torus (B3/S23), board laid on the 8 x 8 token grid",
            "topology": "video tokens attend to their 3 x 3 torus neighbourhood and the prompt; install it with "
                        "canvas_core.demo.life_pretrain.install_life_topology",
            "options": asdict(cfg), "torch": torch.__version__,
            "curve": [{"step": s, "train_loss": None if math.isnan(tl) else round(tl, 6), "one_step_exact": round(a, 4),
                       "cells": round(c, 5)} for s, tl, a, c in curve]}
    atomic_write_text(out / "pretrain.json", json.dumps(meta, indent=1) + "\n", "the Life pretraining record")


def _shipped() -> contextlib.AbstractContextManager:
    from importlib import resources

    root = resources.files("canvas_core.demo").joinpath("weights").joinpath(LIFE_NAME)
    if not root.joinpath("config.json").is_file():
        raise CanvasError(f"the shipped Game of Life backbone is missing from the installed package ({root}); "
                          "reinstall canvas-core, or recreate it with: python scripts/pretrain_life_backbone.py")
    return resources.as_file(root)


def load_life_backbone(path: Optional[Path] = None) -> nn.Module:
    """The pretrained one-step Game of Life CogVideoX (``path``: a directory written by
    :func:`pretrain_life`; default the shipped one), plain (no topology installed yet: graft
    first, then :func:`install_life_topology`), in eval mode, with ``demo_prompt`` attached."""
    from canvas_core.demo.backbones import _load_diffusers

    loader = _load_diffusers("diffusers.CogVideoXTransformer3DModel")
    if path is not None:
        return loader(Path(path)).eval()
    with _shipped() as p:
        return loader(Path(p)).eval()
