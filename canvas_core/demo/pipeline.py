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
from canvas_core.errors import CanvasError

__all__ = ["DemoConfig", "DemoResult", "DemoHead", "run_demo", "declare_program"]


@dataclass
class DemoConfig:
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


def declare_program(tokens: Any, recipe: DemoBackbone):
    """A typed program on the backbone's token grid: video frames (observation), action, reward."""
    from canvas_core import (CanvasLayout, CanvasProgram, CanvasSchema, CanvasTopology, Connection, RegionProgram,
                             RegionSpec)

    boxes = recipe.regions(tokens)
    grid = tokens.layout
    regions = {
        "video": RegionSpec(bounds=boxes["video"], is_output=False, semantic_type="latent video of a moving blob"),
        "action": RegionSpec(bounds=boxes["action"], loss_weight=2.0, semantic_type="2-d velocity to follow the blob"),
    }
    if "reward" in boxes:
        regions["reward"] = RegionSpec(bounds=boxes["reward"], semantic_type="fraction of frames the blob is in view")
    layout = CanvasLayout(T=grid.T, spatial_shape=grid.spatial_shape, d_model=grid.d_model, regions=regions)
    conns = [Connection("video", "video", t_src=0, t_dst=0)]
    if grid.T > 1:  # video also reads its previous frame: causal in time
        conns.append(Connection("video", "video", t_src=0, t_dst=-1))
    conns += [Connection("action", "video"), Connection("action", "action")]
    programs = {"video": RegionProgram(family="observation"), "action": RegionProgram(family="action")}
    if "reward" in regions:
        conns += [Connection("reward", "video", weight=0.5), Connection("reward", "action")]
        programs["reward"] = RegionProgram(family="state")
    schema = CanvasSchema(layout=layout, topology=CanvasTopology(conns),
                          metadata={"name": f"canvas-demo-{recipe.name}", "task": "moving blob"})
    return CanvasProgram(schema=schema, regions=programs)


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
            bar.set_postfix(loss=f"{loss.item():.4f}", loops=sched.get_loops(step))
    if not cfg.progress:
        log(f"  trained {name}: {cfg.steps} steps, last loss {losses[-1] if losses else float('nan'):.4f}")
    return losses


@torch.no_grad()
def _evaluate(recipe, model, blocks, head, batch, cfg, loops, with_reward) -> float:
    model.eval()
    for b in blocks:
        b.set_loops(loops)
    preds = []
    for i in range(0, batch.video.shape[0], 64):
        kwargs = model_inputs(recipe, model, batch.video[i:i + 64], cfg.seed, cfg.device)
        preds.append(head(recipe.output(model, kwargs)).cpu())
    return torch.nn.functional.mse_loss(torch.cat(preds), _targets(batch, with_reward)).item()


def _progress(it, desc: str, enabled: bool):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=True, dynamic_ncols=True)


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> DemoResult:
    """Run the whole demo; ``log`` receives every line of the report."""
    from canvas_core import ProgramCompiler, save_loop_checkpoint
    from canvas_core.looping import get_adapter
    from canvas_core.viz import draw_schema

    start = time.perf_counter()
    if not isinstance(cfg.loops, int) or cfg.loops < 1:
        raise CanvasError(f"--loops must be an integer >= 1, got {cfg.loops!r}")
    if not isinstance(cfg.steps, int) or cfg.steps < 1:
        raise CanvasError(f"--steps must be an integer >= 1, got {cfg.steps!r}")
    if str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise CanvasError(f"--device {cfg.device} asked for CUDA, but torch sees no CUDA device here; use --device cpu")
    recipe = get_backbone(cfg.backbone)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. backbone and its token grid; 2. the typed program on that grid
    backbone = _build(recipe, cfg).eval()
    task = BlobTask()
    probe = task.sample(2, torch.Generator().manual_seed(cfg.seed))
    from canvas_core import graft_looped_blocks

    scratch = copy.deepcopy(backbone)
    graft_looped_blocks(scratch, max_loops=1, freeze="full", action_dim=2)
    tokens = get_adapter(scratch).token_layout(scratch, model_inputs(recipe, scratch, probe.video, cfg.seed))
    del scratch
    program = declare_program(tokens, recipe)
    schema = program.schema
    with_reward = "reward" in schema.layout.regions
    log(f"== 1. program on the {recipe.name} token grid ==")
    log(program.summary() if hasattr(program, "summary") else schema.summary())

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
    mse_mean = torch.nn.functional.mse_loss(train_mean.expand(cfg.eval_samples, -1), _targets(held_out, with_reward)).item()
    results = {name: _evaluate(recipe, m, b, h, held_out, cfg, loops, with_reward)
               for name, (m, b, h, loops) in arms.items()}
    log(f"\n== 4. evaluation on {cfg.eval_samples} held-out videos (action MSE, lower is better) ==")
    log(f"{'model':<22}{'MSE':>10}{'vs mean':>10}")
    for name, mse in list(results.items()) + [("predict the mean", mse_mean)]:
        log(f"{name:<22}{mse:>10.4f}{mse / mse_mean:>10.2f}")

    # 6. checkpoint of the loop parameters only; 7. picture of the canvas
    model, blocks, head, _ = arms[looped_name]
    ckpt = out / "loops.safetensors"
    save_loop_checkpoint(blocks, head, str(ckpt), metadata={"demo_backbone": recipe.name, "steps": cfg.steps,
                                                            "schema_hash": schema.schema_hash()})
    picture = draw_schema(schema, out / "canvas.png", title=f"canvas demo: {recipe.name} token grid")
    seconds = time.perf_counter() - start
    log("\n== 5. artifacts ==")
    log(f"loop checkpoint  {ckpt}  ({ckpt.stat().st_size / 1024:.1f} KiB, {trainable:,} parameters)")
    log(f"canvas picture   {picture}")
    log(f"schema           {schema_path}")
    log(f"done in {seconds:.1f} s")
    return DemoResult(mse_looped=results[looped_name], mse_plain=results["no loops"], mse_mean=mse_mean,
                      checkpoint=ckpt, picture=picture, schema_path=schema_path, trainable_params=trainable,
                      total_params=total, seconds=seconds, report=compiled.report(), losses=losses)
