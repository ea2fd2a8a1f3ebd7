"""The demo pipeline: declare a typed program on the backbone's token grid, compile it, graft
looped attention onto the frozen backbone, train loops + action head on the blob task, evaluate
against the same backbone without loops, save the loop checkpoint and draw the canvas."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from canvas_core.demo.backbones import DemoBackbone, get_backbone, model_inputs
from canvas_core.demo.task import BlobTask
from canvas_core.errors import BackboneError, CanvasError
from canvas_core.program import Field

__all__ = ["DemoConfig", "DemoResult", "DemoHead", "BlobWorld", "run_demo", "declare_program"]


@dataclass
class DemoConfig:
    """Options of one demo run (the ``canvas demo`` flags; ``eval_samples`` is the held-out set)."""

    backbone: str = "cogvideox"
    loops: int = 3
    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3
    eval_samples: int = 256
    device: str = "cpu"
    seed: int = 0
    out: Path = Path("canvas_demo_out")
    pretrained: Optional[Path] = None
    progress: bool = True


@dataclass
class DemoResult:
    """What one run produced: held-out action (velocity) MSE of the looped graft, of the same
    backbone without loops and of predicting the training mean; per-model ``errors``
    (``{"action": ..., "reward": ...}``); the artifacts; parameter counts; training losses."""

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


@dataclass
class BlobWorld:
    """The demo's typed program: one ``Field`` per region, sized from the backbone's token grid.

    ``video`` (family ``observation``): the latent video frames; ``action`` (family ``action``):
    the velocity to output; ``reward`` (family ``state``): how long the blob stays in view (absent
    when the grid has no room for it, e.g. ViT's single CLS token).
    """

    video: Field
    action: Field
    reward: Optional[Field] = None


_FAMILIES = {"video": "observation", "action": "action", "reward": "state"}
_MEANING = {"video": "latent video of a moving blob", "action": "2-d velocity to follow the blob",
            "reward": "fraction of frames the blob is in view"}


def _field(name: str, box: tuple, T: int) -> Field:
    """A ``Field`` the size of ``box`` (bounds on the token grid, starting at frame 0)."""
    t0, t1, *spatial = box
    shape = tuple(spatial[2 * i + 1] - spatial[2 * i] for i in range(len(spatial) // 2))
    return Field(spatial_shape=shape, family=_FAMILIES[name], semantic_type=_MEANING[name],
                 temporal_extent=None if t1 - t0 == T else t1 - t0, is_output=name != "video",
                 loss_weight=2.0 if name == "action" else 1.0)


def declare_program(tokens: Any, recipe: DemoBackbone):
    """The demo's program on the backbone's token grid ``tokens.layout``.

    The typed fields of :class:`BlobWorld` are compiled with ``compile_program`` on the grid
    (shelf packing puts them exactly on the backbone's video and text/CLS tokens, which is
    checked); the dense default topology is then tailored: the video tokens keep reading the
    video only (same and previous frame), action and reward read everything.
    """
    import dataclasses

    from canvas_core import CanvasProgram, CanvasSchema, CanvasTopology, compile_program

    boxes = recipe.regions(tokens)
    grid = tokens.layout
    world = BlobWorld(**{name: _field(name, box, grid.T) for name, box in boxes.items()})
    _, program = compile_program(world, T=grid.T, spatial_shape=tuple(grid.spatial_shape), d_model=grid.d_model)
    placed = {name: program.schema.layout.region_spec(name).bounds for name in boxes}
    if placed != {name: tuple(box) for name, box in boxes.items()}:
        raise BackboneError(f"the demo's fields landed at {placed} on the {recipe.name} token grid, "
                            f"not on the backbone's tokens {boxes}")
    conns = []
    for c in program.schema.topology.connections:
        if c.src == "video" and c.dst != "video":
            continue  # the observation stream stays the backbone's own video attention
        if (c.src, c.dst) == ("video", "video") and grid.T > 1:  # causal in time
            conns += [dataclasses.replace(c, t_src=0, t_dst=0), dataclasses.replace(c, t_src=0, t_dst=-1)]
        else:
            conns.append(c)
    schema = CanvasSchema(layout=program.schema.layout, topology=CanvasTopology(conns),
                          metadata={"name": f"canvas-demo-{recipe.name}", "task": "moving blob"})
    connections = {k: v for k, v in program.connections.items() if k in {(c.src, c.dst) for c in conns}}
    return CanvasProgram(schema=schema, regions=program.regions, connections=connections)


def _build(recipe: DemoBackbone, cfg: DemoConfig) -> nn.Module:
    if cfg.pretrained is not None:
        path = Path(cfg.pretrained)
        if not path.is_dir():
            raise CanvasError(f"--pretrained {str(path)!r} is not a directory")
        return recipe.load(path)
    return recipe.build(cfg.seed)


class DemoHead(nn.Module):
    """Action head of the demo: ``(B, ...) -> (B, action_dim)`` through an MLP on the flattened
    backbone output (velocity needs *where* the blob is in each frame, which the library's
    ``ActionHead`` would average away)."""

    def __init__(self, in_features: int, action_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, action_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1).float())


def _graft(recipe, backbone, loops, schema, tokens, cfg, in_features: int):
    from canvas_core import graft_looped_blocks
    from canvas_core.looping import get_adapter

    model = copy.deepcopy(backbone)
    action_dim = 3 if "reward" in schema.layout.regions else 2
    blocks, _ = graft_looped_blocks(model, max_loops=loops, freeze="full", action_dim=action_dim, schema=schema)
    torch.manual_seed(cfg.seed + 1)  # same head initialisation for both arms
    head = DemoHead(in_features, action_dim)
    adapter = get_adapter(model)
    adapter.install_topology(model, schema.topology, tokens.with_layout(schema.layout))
    return model.to(cfg.device), blocks, head.to(cfg.device)


def _targets(batch, with_reward: bool) -> torch.Tensor:
    return torch.cat([batch.action, batch.reward], 1) if with_reward else batch.action


def _train(name, recipe, model, blocks, head, task, cfg, loops, with_reward, log) -> List[float]:
    from canvas_core import CurriculumScheduler

    params = [p for b in blocks for p in b.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    sched = CurriculumScheduler(max_loops=loops, total_steps=max(1, cfg.steps))
    gen = torch.Generator().manual_seed(cfg.seed + 100)
    losses = []
    model.train()
    bar = _progress(range(cfg.steps), desc=f"train {name:<14}", enabled=cfg.progress)
    for step in bar:
        sched.step(blocks, step)
        batch = task.sample(cfg.batch_size, gen)
        kwargs = model_inputs(recipe, model, batch.video, cfg.seed, cfg.device)
        pred = head(recipe.output(model, kwargs))
        loss = torch.nn.functional.mse_loss(pred, _targets(batch, with_reward).to(cfg.device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss.item():.4f}", loops=sched.get_loops(step), refresh=False)
    if not cfg.progress:
        log(f"  trained {name}: {cfg.steps} steps, last loss {losses[-1] if losses else float('nan'):.4f}")
    return losses


@torch.no_grad()
def _evaluate(recipe, model, blocks, head, batch, cfg, loops) -> torch.Tensor:
    """Predictions ``(B, 2 or 3)`` of ``model`` + ``head`` at ``loops`` loops for ``batch``."""
    model.eval()
    for b in blocks:
        b.set_loops(loops)
    preds = []
    for i in range(0, batch.video.shape[0], 64):
        kwargs = model_inputs(recipe, model, batch.video[i:i + 64], cfg.seed, cfg.device)
        preds.append(head(recipe.output(model, kwargs)).float().cpu())
    return torch.cat(preds)


def _errors(pred: torch.Tensor, batch) -> Dict[str, float]:
    """Velocity (action) MSE and, when predicted, reward MSE."""
    mse = torch.nn.functional.mse_loss
    out = {"action": mse(pred[:, :2], batch.action).item()}
    if pred.shape[1] > 2:
        out["reward"] = mse(pred[:, 2:], batch.reward).item()
    return out


def _progress(it, desc: str, enabled: bool):
    if not enabled:
        return it
    import sys

    from tqdm.auto import tqdm

    # redirected to a file or CI log: a few lines, not one per step
    interactive = getattr(sys.stderr, "isatty", lambda: False)()
    return tqdm(it, desc=desc, leave=True, dynamic_ncols=True, mininterval=0.1 if interactive else 10.0)


def _check_config(cfg: DemoConfig) -> None:
    """Refuse bad options with one clear ``CanvasError`` each (before any work)."""
    for opt, value in (("--loops", cfg.loops), ("--steps", cfg.steps), ("--batch-size", cfg.batch_size),
                       ("eval_samples", cfg.eval_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CanvasError(f"{opt} must be an integer >= 1, got {value!r}")
    if not (isinstance(cfg.lr, (int, float)) and cfg.lr > 0):
        raise CanvasError(f"--lr must be a number > 0, got {cfg.lr!r}")
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
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:  # fail before training, not after
        raise CanvasError("the demo draws the canvas with matplotlib, which is not installed: "
                          "pip install 'canvas-core[draw]'")


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> DemoResult:
    """Run the whole demo; ``log`` receives every line of the report."""
    from canvas_core import ProgramCompiler, save_loop_checkpoint
    from canvas_core.looping import get_adapter
    from canvas_core.viz import draw_schema

    start = time.perf_counter()
    _check_config(cfg)
    recipe = get_backbone(cfg.backbone)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CanvasError(f"--out {str(out)!r}: cannot create the output folder ({exc.strerror}); "
                          "give a writable directory") from None

    # 1. backbone and its token grid; 2. the typed program on that grid
    backbone = _build(recipe, cfg).eval()
    frames, height, width = recipe.video_shape(backbone)  # whole patches of a pretrained model too
    task = BlobTask(frames=frames, channels=recipe.channels(backbone), height=height, width=width)
    probe = task.sample(2, torch.Generator().manual_seed(cfg.seed))
    from canvas_core import graft_looped_blocks

    scratch = copy.deepcopy(backbone)
    graft_looped_blocks(scratch, max_loops=1, freeze="full", action_dim=2)
    tokens = get_adapter(scratch).token_layout(scratch, model_inputs(recipe, scratch, probe.video, cfg.seed))
    del scratch
    program = declare_program(tokens, recipe)
    schema = program.schema
    with_reward = "reward" in schema.layout.regions
    grid = tokens.layout
    log(f"== 1. program on the {recipe.name} token grid "
        f"(T={grid.T}, spatial={tuple(grid.spatial_shape)}, d_model={grid.d_model}, {tokens.seq_len} tokens) ==")
    for name, spec in schema.layout.regions.items():
        te = f", temporal_extent={spec.extent[0]}" if spec.extent[0] < grid.T else ""
        log(f"  {name:<7} Field(spatial_shape={spec.extent[1:]}, family={program.regions[name].family!r}{te})"
            f"  -> bounds {spec.bounds}, {schema.layout.region_numel(name)} positions")
    log(program.summary())

    # 3. compile: resolution report for the target device
    compiled = ProgramCompiler(program).compile(device=cfg.device)
    log("\n== 2. compiled ==")
    log(compiled.report())
    schema_path = out / "schema.json"
    schema.to_json(schema_path)

    # 4. graft looped attention (and a no-loop twin for the comparison), train both
    total = sum(p.numel() for p in backbone.parameters())
    with torch.no_grad():
        in_features = recipe.output(backbone, model_inputs(recipe, backbone, probe.video, cfg.seed))[0].numel()
    backbone.to("cpu")
    arms = {}
    for name, loops in ((f"{cfg.loops}-loop graft", cfg.loops), ("no loops", 1)):
        model, blocks, head = _graft(recipe, backbone, loops, schema, tokens, cfg, in_features)
        arms[name] = (model, blocks, head, loops)
    looped_name = f"{cfg.loops}-loop graft"
    loop_params = sum(p.numel() for b in arms[looped_name][1] for p in b.parameters() if p.requires_grad)
    trainable = loop_params + sum(p.numel() for p in arms[looped_name][2].parameters())
    log(f"\n== 3. grafted {cfg.loops}-loop attention onto the frozen {recipe.name} backbone ==")
    log(f"backbone parameters {total:,} (frozen); loop parameters {loop_params:,} "
        f"({100.0 * loop_params / max(1, total):.2f}%); action head {trainable - loop_params:,}")
    losses = {}
    for name, (model, blocks, head, loops) in arms.items():
        losses[name] = _train(name, recipe, model, blocks, head, task, cfg, loops, with_reward, log)

    # 5. evaluate on held-out samples
    held_out = task.sample(cfg.eval_samples, torch.Generator().manual_seed(cfg.seed + 10_000))
    train_mean = _targets(task.sample(1024, torch.Generator().manual_seed(cfg.seed + 100)), with_reward).mean(0)
    results = {name: _errors(_evaluate(recipe, m, b, h, held_out, cfg, loops), held_out)
               for name, (m, b, h, loops) in arms.items()}
    results["predict the mean"] = _errors(train_mean.expand(cfg.eval_samples, -1), held_out)
    mean_mse = results["predict the mean"]["action"]
    log(f"\n== 4. evaluation on {cfg.eval_samples} held-out videos (MSE, lower is better) ==")
    log(f"{'model':<20}{'action MSE':>12}{'vs mean':>9}" + (f"{'reward MSE':>12}" if with_reward else ""))
    for name, err in results.items():
        log(f"{name:<20}{err['action']:>12.4f}{err['action'] / mean_mse:>9.2f}"
            + (f"{err['reward']:>12.4f}" if with_reward else ""))

    # 6. checkpoint of the loop parameters only; 7. picture of the canvas
    model, blocks, head, _ = arms[looped_name]
    ckpt = out / "loops.safetensors"
    save_loop_checkpoint(blocks, head, str(ckpt), metadata={"demo_backbone": recipe.name, "steps": cfg.steps,
                                                            "schema_hash": schema.schema_hash()})
    picture = draw_schema(schema, out / "canvas.png", title=f"canvas demo: {recipe.name} token grid")
    seconds = time.perf_counter() - start
    log("\n== 5. artifacts ==")
    log(f"loop checkpoint  {ckpt}  ({ckpt.stat().st_size / 1024:.1f} KiB: {loop_params:,} loop parameters = "
        f"{100.0 * loop_params / max(1, total):.2f}% of the backbone's, + {trainable - loop_params:,} action head)")
    log(f"canvas picture   {picture}")
    log(f"schema           {schema_path}")
    log(f"done in {seconds:.1f} s")
    return DemoResult(mse_looped=results[looped_name]["action"], mse_plain=results["no loops"]["action"],
                      mse_mean=mean_mse,
                      checkpoint=ckpt, picture=picture, schema_path=schema_path, trainable_params=trainable,
                      total_params=total, seconds=seconds, report=compiled.report(), losses=losses,
                      errors=results)
