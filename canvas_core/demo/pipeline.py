"""The demo pipeline: declare a typed program on the backbone's token grid, compile it, graft
looped attention onto the frozen pretrained backbone, train loops + action head on the blob task,
compare on held-out videos with the frozen backbone at one loop and with the same backbone
unfrozen (all parameters trained), save the loop checkpoint and draw the canvas."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from canvas_core.demo.backbones import DemoBackbone, get_backbone
from canvas_core.demo.program import BlobWorld, declare_program
from canvas_core.demo.study import Condition, DemoHead, TrainOptions, errors, prepare, run_condition, targets
from canvas_core.errors import CanvasError

__all__ = ["DemoConfig", "DemoResult", "DemoHead", "BlobWorld", "run_demo", "declare_program", "comparison",
           "verdict"]


@dataclass
class DemoConfig:
    """Options of one demo run (the ``canvas demo`` flags; ``eval_samples`` is the held-out set,
    ``train_videos`` the size of the labelled training set, ``None`` for a fresh video per sample)."""

    backbone: str = "cogvideox"
    loops: int = 3
    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3
    eval_samples: int = 256
    train_videos: Optional[int] = None
    device: str = "cpu"
    seed: int = 0
    out: Path = Path("canvas_demo_out")
    pretrained: Optional[Path] = None
    random_init: bool = False
    progress: bool = True


@dataclass
class DemoResult:
    """What one run produced. ``mse_looped``: held-out action (velocity) MSE of the frozen backbone
    with ``loops`` loops; ``mse_plain``: frozen, one loop; ``mse_unfrozen``: unfrozen, one loop;
    ``mse_mean``: predicting the training mean. ``errors`` maps each row of the table to
    ``{"action": ..., "reward": ...}``, ``trainable`` each trained condition to its trainable
    parameter count, ``losses`` to its training losses. ``backbone_source`` says where the
    backbone's weights came from."""

    mse_looped: float
    mse_plain: float
    mse_mean: float
    checkpoint: Path
    picture: Path
    schema_path: Path
    trainable_params: int
    total_params: int
    seconds: float
    report: str = ""
    losses: Dict[str, List[float]] = field(default_factory=dict)
    errors: Dict[str, Dict[str, float]] = field(default_factory=dict)
    mse_unfrozen: float = float("nan")
    trainable: Dict[str, int] = field(default_factory=dict)
    backbone_source: str = ""


def _progress(it, desc: str, enabled: bool, total: Optional[int] = None):
    if not enabled:
        return it
    import sys

    from tqdm.auto import tqdm

    # redirected to a file or CI log: a few lines, not one per step
    interactive = getattr(sys.stderr, "isatty", lambda: False)()
    return tqdm(it, desc=desc, total=total, leave=True, dynamic_ncols=True, mininterval=0.1 if interactive else 10.0)


def _check_config(cfg: DemoConfig) -> None:
    """Refuse bad options with one clear ``CanvasError`` each (before any work)."""
    for opt, value in (("--loops", cfg.loops), ("--steps", cfg.steps), ("--batch-size", cfg.batch_size),
                       ("eval_samples", cfg.eval_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CanvasError(f"{opt} must be an integer >= 1, got {value!r}")
    from canvas_core.schema.limits import check_size

    check_size("loops", cfg.loops, "--loops")
    check_size("batch", cfg.batch_size, "--batch-size")
    if cfg.train_videos is not None and (isinstance(cfg.train_videos, bool) or not isinstance(cfg.train_videos, int)
                                         or cfg.train_videos < 1):
        raise CanvasError(f"--train-videos must be an integer >= 1, got {cfg.train_videos!r}")
    if cfg.pretrained is not None and cfg.random_init:
        raise CanvasError("--pretrained and --random-init exclude each other; give one of them")
    if isinstance(cfg.lr, bool) or not isinstance(cfg.lr, (int, float)) or not (0 < cfg.lr <= 1):
        # inf / nan / <= 0 would train to NaN weights; AdamW rates above 1 diverge
        raise CanvasError(f"--lr must be a number > 0 (finite, at most 1; AdamW rates are typically 1e-4 .. "
                          f"1e-2), got {cfg.lr!r}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2 ** 63:
        raise CanvasError(f"--seed must be an integer in [0, 2**63), got {cfg.seed!r}")
    try:
        device = torch.device(cfg.device)
    except (RuntimeError, TypeError):
        raise CanvasError(f"--device {cfg.device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CanvasError(f"--device {cfg.device} asked for CUDA, but torch sees no CUDA device here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CanvasError(f"--device {cfg.device}: only {torch.cuda.device_count()} CUDA device(s) here; "
                          f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if device.type not in ("cpu", "cuda"):
        raise CanvasError(f"--device {cfg.device}: the demo runs on cpu or cuda")
    check_output_folder(cfg.out)
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:  # fail before training, not after
        raise CanvasError("the demo draws the canvas with matplotlib, which is not installed: "
                          "pip install 'canvas-core[draw]'")




def _backbone(recipe: DemoBackbone, cfg: DemoConfig) -> Tuple[nn.Module, str]:
    """The backbone and where its weights come from: ``--pretrained DIR``, else the pretrained tiny
    model shipped with the package (CogVideoX), else (``--random-init``, or a backbone without
    shipped weights) a tiny model with random weights."""
    if cfg.pretrained is not None:
        path = Path(cfg.pretrained)
        if not path.is_dir():
            raise CanvasError(f"--pretrained {str(path)!r} is not a directory")
        return recipe.load(path), f"pretrained, loaded from {path}"
    if not cfg.random_init and recipe.name == "cogvideox":
        from canvas_core.demo.pretrain import SHIPPED_NAME, load_shipped

        return load_shipped(recipe.load), f"pretrained, shipped with canvas-core (demo/weights/{SHIPPED_NAME})"
    why = "--random-init" if cfg.random_init else f"no pretrained {recipe.name} ships with canvas-core"
    return recipe.build(cfg.seed), f"random weights ({why})"


def comparison(cfg: DemoConfig) -> List[Condition]:
    """The demo's conditions: frozen at one loop, frozen at ``cfg.loops`` loops, unfrozen at one loop."""
    return list(dict.fromkeys([Condition(1, True), Condition(cfg.loops, True), Condition(1, False)]))


def verdict(looped: str, plain: str, unfrozen: str, err: Dict[str, Dict[str, float]]) -> List[str]:
    """Plain-language lines comparing the frozen looped model with the two others (action error)."""
    lines = []
    a = err[looped]["action"]
    for other in (plain, unfrozen):
        if other == looped:
            continue
        b = err[other]["action"]
        ratio = a / b if b > 0 else float("inf")
        word = "lower" if ratio < 0.98 else "higher" if ratio > 1.02 else "about the same"
        lines.append(f"  {looped}: action error {ratio:.2f}x that of {other} ({word})")
    return lines


def check_output_folder(out: Any) -> None:
    """Refuse an ``--out`` that cannot become a writable folder, without creating anything: an
    existing non-folder, or a nearest existing ancestor that is not a writable folder."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise CanvasError(f"--out {str(out)!r} exists and is not a folder; give a folder path")
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and (not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK)):
        why = "is not a folder" if not parent.is_dir() else "is not writable"
        raise CanvasError(f"--out {str(out)!r}: cannot create the output folder ({str(parent)!r} {why}); "
                          "give a writable directory")


def output_folder(out: Any) -> Path:
    """``--out`` as a folder that exists (created with its parents); a CanvasError naming it when
    it cannot be made."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CanvasError(f"--out {str(out)!r}: cannot create the output folder ({exc.strerror}); "
                          "give a writable directory") from None
    return out


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> DemoResult:
    """Run the whole demo; ``log`` receives every line of the report."""
    from canvas_core import ProgramCompiler, save_loop_checkpoint
    from canvas_core.viz import draw_schema

    start = time.perf_counter()
    _check_config(cfg)
    recipe = get_backbone(cfg.backbone)
    torch.manual_seed(cfg.seed)

    # 1. backbone and its token grid; the typed program on that grid
    backbone, source = _backbone(recipe, cfg)
    backbone = backbone.eval()
    setup = prepare(recipe, backbone, cfg.seed)
    program, schema, tokens = setup.program, setup.schema, setup.tokens
    with_reward = setup.with_reward
    grid = tokens.layout
    log(f"== 1. program on the {recipe.name} token grid "
        f"(T={grid.T}, spatial={tuple(grid.spatial_shape)}, d_model={grid.d_model}, {tokens.seq_len} tokens) ==")
    for name, spec in schema.layout.regions.items():
        te = f", temporal_extent={spec.extent[0]}" if spec.extent[0] < grid.T else ""
        log(f"  {name:<7} Field(spatial_shape={spec.extent[1:]}, family={program.regions[name].family!r}{te})"
            f"  -> bounds {spec.bounds}, {schema.layout.region_numel(name)} positions")
    log(program.summary())

    # 2. compile: resolution report for the target device
    compiled = ProgramCompiler(program).compile(device=cfg.device)
    log("\n== 2. compiled ==")
    log(compiled.report())
    out = output_folder(cfg.out)  # only now: a refused backbone load or compile leaves no empty --out
    schema_path = out / "schema.json"
    schema.to_json(schema_path)

    # 3. graft and train every condition on the same data
    total = sum(p.numel() for p in backbone.parameters())
    backbone.to("cpu")
    conditions = comparison(cfg)
    looped = Condition(cfg.loops, True)
    opts = TrainOptions(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, device=cfg.device,
                        train_videos=cfg.train_videos)
    held_out = setup.task.sample(cfg.eval_samples, torch.Generator().manual_seed(cfg.seed + 10_000))
    log(f"\n== 3. grafted {cfg.loops}-loop attention onto the frozen {recipe.name} backbone ==")
    log(f"backbone: {source}; {total:,} parameters")
    data = (f"a fixed set of {cfg.train_videos} labelled videos" if cfg.train_videos is not None
            else "a fresh labelled video for every sample")
    log(f"each model trains {cfg.steps} steps of {cfg.batch_size} videos ({data}), same order, same head init")
    rows: Dict[str, Dict[str, Any]] = {}
    for cond in conditions:
        def bar(it, n, _name=cond.name):
            return _progress(it, desc=f"train {_name:<16}", enabled=cfg.progress, total=n)

        row = run_condition(recipe, backbone, setup, cond, opts, held_out, bar if cfg.progress else None)
        rows[cond.name] = row
        if cond != looped:
            row["arm"] = None  # only the frozen looped model is kept (for its checkpoint)
        if not cfg.progress:
            log(f"  trained {cond.name}: {cfg.steps} steps, last loss {row['final_loss']:.4f}")
    arm = rows[looped.name]["arm"]
    log(f"loop parameters of the {cfg.loops}-loop graft {arm.loop_params:,} "
        f"({100.0 * arm.loop_params / max(1, total):.2f}% of the backbone); "
        f"action head {sum(p.numel() for p in arm.head.parameters()):,}")
    gates = [[round(g, 3) for g in b.loop_gate.detach().tolist()] for b in arm.blocks
             if getattr(b, "loop_gate", None) is not None]
    if any(gates):
        log(f"trained loop gates per block {gates} (0: a later loop changes nothing; they start at 0)")

    # 4. evaluate on held-out videos
    train_mean = targets(setup.task.sample(1024, torch.Generator().manual_seed(cfg.seed + 100)), with_reward).mean(0)
    results = {name: {k: row[k] for k in ("action", "reward") if k in row} for name, row in rows.items()}
    results["predict the mean"] = errors(train_mean.expand(cfg.eval_samples, -1), held_out)
    mean_mse = results["predict the mean"]["action"]
    log(f"\n== 4. evaluation on {cfg.eval_samples} held-out videos (MSE, lower is better) ==")
    log(f"{'model':<20}{'trainable':>11}{'action MSE':>12}{'vs mean':>9}" + (f"{'reward MSE':>12}" if with_reward else ""))
    for name, err in results.items():
        params = f"{rows[name]['trainable']:,}" if name in rows else "0"
        log(f"{name:<20}{params:>11}{err['action']:>12.4f}{err['action'] / mean_mse:>9.2f}"
            + (f"{err['reward']:>12.4f}" if with_reward else ""))
    plain, unfrozen = Condition(1, True).name, Condition(1, False).name
    log("result (action error):")
    for line in verdict(looped.name, plain, unfrozen, results):
        log(line)
    if cfg.steps < 100:
        log(f"  (only {cfg.steps} training steps: a smoke run, these numbers say nothing about the models)")

    # 5. checkpoint of the loop parameters (and head) only; picture of the canvas
    ckpt = out / "loops.safetensors"
    save_loop_checkpoint(arm.blocks, arm.head, str(ckpt),
                         metadata={"demo_backbone": recipe.name, "steps": cfg.steps, "backbone": source,
                                   "schema_hash": schema.schema_hash()})
    picture = draw_schema(schema, out / "canvas.png", title=f"canvas demo: {recipe.name} token grid")
    seconds = time.perf_counter() - start
    head_params = sum(p.numel() for p in arm.head.parameters())
    log("\n== 5. artifacts ==")
    log(f"loop checkpoint  {ckpt}  ({ckpt.stat().st_size / 1024:.1f} KiB: {arm.loop_params:,} loop parameters = "
        f"{100.0 * arm.loop_params / max(1, total):.2f}% of the backbone's, + {head_params:,} action head)")
    log(f"canvas picture   {picture}")
    log(f"schema           {schema_path}")
    log(f"done in {seconds:.1f} s")
    return DemoResult(mse_looped=results[looped.name]["action"], mse_plain=results[plain]["action"],
                      mse_mean=mean_mse, mse_unfrozen=results[unfrozen]["action"],
                      checkpoint=ckpt, picture=picture, schema_path=schema_path, trainable_params=arm.trainable,
                      total_params=total, seconds=seconds, report=compiled.report(),
                      losses={name: row["losses"]
                              for name, row in rows.items()},
                      errors=results, trainable={name: row["trainable"] for name, row in rows.items()},
                      backbone_source=source)
