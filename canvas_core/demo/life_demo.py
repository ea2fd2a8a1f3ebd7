"""``canvas demo`` (default task): can a frozen one-step world model, looped, predict k steps ahead?

The shipped tiny CogVideoX learned ONE step of Conway's Game of Life on an 8 x 8 torus (one token
per cell, a canvas topology giving every cell its 3 x 3 neighbourhood). The demo trains, for a
few ``k``, a handful of the loop study's conditions (:mod:`canvas_core.demo.life_study`) for the
same small budget and prints one table: trainable parameters and exact-board accuracy of the
frozen backbone looped as a step map against the controls and the explicit rollout, then the
iterations adaptive exit uses. One seed, no learning-rate sweep, fewer steps than
``benchmarks/loop_study.py`` (whose results are in ``docs/looping.md``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from canvas_core.errors import CanvasError

__all__ = ["LifeDemoConfig", "LifeDemoResult", "run_life_demo", "DEMO_KINDS", "DEMO_LRS", "demo_lr"]

#: the conditions the demo trains (the study adds scope="block" and a deeper unfrozen model)
DEMO_KINDS = ("rollout", "model", "stack", "frozen1", "unfrozen")
#: learning rate per condition (the full study sweeps; these are its usual choices)
DEMO_LRS: Dict[str, float] = {"model": 1e-2, "stack": 1e-3, "block": 1e-3, "frozen1": 1e-3, "unfrozen": 3e-4,
                              "deeper": 3e-4}
#: the looped step map at k >= 8: the study's sweep chose 1e-3 in two of three seeds (1e-2 collapsed there)
DEEP_MODEL_LR = 1e-3


def demo_lr(kind: str, k: int) -> float:
    """The demo's learning rate for ``kind`` trained towards ``k`` steps ahead."""
    return DEEP_MODEL_LR if kind == "model" and k >= 8 else DEMO_LRS[kind]
EXIT_TOL = 0.1
_WORDS = {"rollout": "explicit rollout", "stack": "span loop (scope='stack')", "block": "per-block loops",
          "frozen1": "frozen at 1 loop", "unfrozen": "unfrozen 1 pass", "deeper": "unfrozen 2k blocks"}


@dataclass
class LifeDemoConfig:
    """Options of the Game of Life demo (the ``canvas demo`` flags)."""

    ks: Tuple[int, ...] = (2, 4, 8)
    steps: int = 30
    batch_size: int = 16
    lr: Optional[float] = None
    test_boards: int = 384
    seed: int = 0
    out: Path = Path("canvas_demo_out")
    progress: bool = True
    kinds: Tuple[str, ...] = DEMO_KINDS


@dataclass
class LifeDemoResult:
    """``exact[kind][k]``: held-out exact-board accuracy; ``trainable[kind][k]``: trainable
    parameters; ``exit[k]``: ``(exact, mean iterations)`` of the looped model with adaptive exit."""

    exact: Dict[str, Dict[int, float]] = field(default_factory=dict)
    cell_error: Dict[str, Dict[int, float]] = field(default_factory=dict)
    trainable: Dict[str, Dict[int, int]] = field(default_factory=dict)
    exit: Dict[int, Tuple[float, float]] = field(default_factory=dict)
    one_step: float = float("nan")
    checkpoint: Optional[Path] = None
    picture: Optional[Path] = None
    seconds: float = 0.0


def _check(cfg: LifeDemoConfig) -> None:
    from canvas_core.schema.limits import check_size

    for opt, value in (("--steps", cfg.steps), ("--batch-size", cfg.batch_size), ("test_boards", cfg.test_boards)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CanvasError(f"{opt} must be an integer >= 1, got {value!r}")
    check_size("batch", cfg.batch_size, "--batch-size")
    if not cfg.ks or any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 16 for k in cfg.ks):
        raise CanvasError(f"--ks must list integers from 1 to 16 (steps ahead), got {list(cfg.ks)!r}")
    if cfg.lr is not None and (isinstance(cfg.lr, bool) or not isinstance(cfg.lr, (int, float))
                               or not math.isfinite(cfg.lr) or not 0 < cfg.lr <= 1):
        raise CanvasError(f"--lr must be a number > 0 (finite, at most 1), got {cfg.lr!r}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2 ** 63:
        raise CanvasError(f"--seed must be an integer in [0, 2**63), got {cfg.seed!r}")
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise CanvasError("the demo draws the canvas with matplotlib, which is not installed: "
                          "pip install 'canvas-core[draw]'")


def _bar(enabled: bool):
    if not enabled:
        return None
    import sys

    from tqdm.auto import tqdm

    interactive = getattr(sys.stderr, "isatty", lambda: False)()

    def wrap(it, n, desc="train"):
        return tqdm(it, desc=desc, total=n, leave=False, dynamic_ncols=True, mininterval=0.1 if interactive else 10.0)
    return wrap


def run_life_demo(cfg: LifeDemoConfig, log: Callable[[str], None] = print) -> LifeDemoResult:
    """Run the Game of Life comparison; ``log`` receives every line of the report."""
    import copy

    from canvas_core.demo.life import COGVIDEOX_LIFE
    from canvas_core.demo.life_pretrain import LIFE_NAME, install_life_topology, load_life_backbone
    from canvas_core.demo.life_study import KINDS, make_arm, predict, rollout_scores, score, study_data, train_life_arm
    from canvas_core.demo.pipeline import output_folder

    start = time.perf_counter()
    _check(cfg)
    out = output_folder(cfg.out)
    torch.manual_seed(cfg.seed)
    backbone = load_life_backbone()
    stepper = install_life_topology(copy.deepcopy(backbone))
    ks = sorted(set(cfg.ks))
    data = study_data(cfg.seed, cfg.test_boards, 16, max(ks))
    res = LifeDemoResult()
    size = data.task.size
    log(f"== 1. the world: Conway's Game of Life on an {size} x {size} torus ==")
    log(f"a board is one latent frame of the tiny CogVideoX ({2 * size} x {2 * size} x {COGVIDEOX_LIFE['in_channels']} "
        f"latents: {size} x {size} video tokens, one per cell, + {COGVIDEOX_LIFE['max_text_seq_length']} prompt tokens);")
    log("canvas topology in every block: a cell's token attends to its 3 x 3 neighbourhood on the torus "
        "and to the prompt")
    total = sum(p.numel() for p in backbone.parameters())
    roll = rollout_scores(stepper, data.test, max(ks))
    res.one_step = roll[0]["exact"]
    log(f"\n== 2. the backbone: pretrained on ONE step (shipped, demo/weights/{LIFE_NAME}; {total:,} parameters) ==")
    log(f"one step ahead: {100 * roll[0]['exact']:.1f}% of {cfg.test_boards} held-out boards exactly right "
        f"(good, not perfect: errors can compound)")
    log("applying it k times, decoding to 0/1 between steps (the explicit rollout, no training): "
        + ", ".join(f"k={k}: {100 * roll[k - 1]['exact']:.1f}%" for k in ks))
    kinds = [k for k in cfg.kinds if k != "rollout"]
    log(f"\n== 3. training each condition {cfg.steps} steps of {cfg.batch_size} boards to predict the board k "
        f"steps ahead (k = {', '.join(map(str, ks))}) ==")
    log("demo budget: 1 seed, no learning-rate sweep; the full study (benchmarks/loop_study.py: 3 seeds, lr sweeps, "
        "more steps, every control) is reported in docs/looping.md")
    res.exact["rollout"] = {k: roll[k - 1]["exact"] for k in ks}
    res.cell_error["rollout"] = {k: roll[k - 1]["cell_error"] for k in ks}
    res.trainable["rollout"] = {k: 0 for k in ks}
    bar = _bar(cfg.progress)
    kept = None
    for k in ks:
        for kind in kinds:
            if kind == "deeper" and k == 1:
                continue
            arm = make_arm(backbone, kind, k, cfg.seed)
            lr = cfg.lr if cfg.lr is not None else demo_lr(kind, k)
            prog = None if bar is None else (lambda it, n, _d=f"k={k} {KINDS[kind]}": bar(it, n, _d))
            train_life_arm(arm, data.task, cfg.steps, cfg.batch_size, lr, cfg.seed, progress=prog)
            sc = score(predict(arm, data.test.start)[0], data.test.target(k))
            res.exact.setdefault(kind, {})[k] = sc["exact"]
            res.cell_error.setdefault(kind, {})[k] = sc["cell_error"]
            res.trainable.setdefault(kind, {})[k] = arm.trainable
            if not cfg.progress:
                log(f"  trained k={k} {KINDS[kind]}: lr {lr:g}, {arm.seconds:.1f} s, exact {sc['exact']:.3f}")
            if kind == "model":
                pred, iters = predict(arm, data.test.start, k, exit_tol=EXIT_TOL)
                res.exit[k] = (score(pred, data.test.target(k))["exact"], iters)
                kept = arm
    _table(res, ks, cfg, log)
    if kept is not None:
        _telemetry(kept, data.test.start[:32], log)
        _artifacts(res, kept, stepper, out, log)
    res.seconds = time.perf_counter() - start
    log(f"done in {res.seconds:.1f} s")
    return res


def _table(res: LifeDemoResult, ks: List[int], cfg: LifeDemoConfig, log) -> None:
    from canvas_core.demo.life_study import KINDS

    log(f"\n== 4. result: boards predicted exactly, {cfg.test_boards} held-out boards (higher is better) ==")
    log(f"{'condition':<34}{'trainable':>12}" + "".join(f"{'k=' + str(k):>9}" for k in ks))
    for kind, acc in res.exact.items():
        counts = sorted(set(res.trainable[kind].values()))
        params = f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,}-{counts[-1]:,}"
        log(f"{KINDS[kind]:<34}{params:>12}" + "".join(f"{acc[k]:>9.3f}" if k in acc else f"{'-':>9}" for k in ks))
    if res.exit:
        log(f"adaptive exit of the looped model (exit_tol {EXIT_TOL}, at most k iterations): "
            + "; ".join(f"k={k}: {it:.2f} iterations, exact {ex:.3f}" for k, (ex, it) in sorted(res.exit.items())))
    if "model" in res.exact:
        log("in words (share of boards exactly right):")
        for k in ks:
            parts = [f"{_WORDS[kind]} {res.exact[kind][k]:.2f}" for kind in res.exact
                     if kind != "model" and k in res.exact[kind]]
            log(f"  k={k}: the frozen backbone looped {k} times as a step map {res.exact['model'].get(k, float('nan')):.2f}; "
                + ", ".join(parts))
    if cfg.steps < 20:
        log(f"  (only {cfg.steps} training steps: a smoke run, these numbers say nothing about the models)")


def _telemetry(arm, boards: torch.Tensor, log) -> None:
    """What the loops of the looped step map did on a few boards: its gates and, per iteration,
    how much the state changed (``record_telemetry`` and ``loop_stats``)."""
    from canvas_core import loop_stats, record_telemetry
    from canvas_core.demo.life_study import predict

    with record_telemetry(arm.model) as tel:
        predict(arm, boards)
    gates = {k[len("gate/"):]: v for k, v in tel.values().items() if k.startswith("gate/")}
    stats = loop_stats(arm.model)
    log(f"\n== 5. telemetry of the looped step map, k={arm.k} (canvas_core.record_telemetry, "
        f"{boards.shape[0]} boards) ==")
    if gates:
        largest = sorted(gates.items(), key=lambda kv: -abs(kv[1]))[:4]
        log(f"{len(gates)} gate values; largest |value|: " + ", ".join(f"{k} = {v:+.3f}" for k, v in largest))
    change = stats.get("rel_change") or []
    if change:
        log("relative change of the state per iteration (does each loop still do something?): "
            + ", ".join(f"{float(c):.3f}" for c in change))


def _artifacts(res: LifeDemoResult, arm, stepper, out: Path, log) -> None:
    from canvas_core import CanvasSchema, save_loop_checkpoint
    from canvas_core.demo.life import encode, life_inputs
    from canvas_core.demo.life_pretrain import life_topology
    from canvas_core.looping import get_adapter, loop_parts_of
    from canvas_core.viz import draw_schema

    ckpt = out / "loops.safetensors"
    save_loop_checkpoint(loop_parts_of(arm.model), arm.head, str(ckpt),
                         metadata={"demo_task": "life", "k": arm.k, "scope": "model"})
    probe = encode(torch.zeros(1, 8, 8, dtype=torch.long))
    tokens = get_adapter(arm.model).token_layout(arm.model, life_inputs(arm.model, probe))
    schema = CanvasSchema(layout=tokens.layout, topology=life_topology(8), metadata={"name": "canvas-demo-life"})
    picture = draw_schema(schema, out / "canvas.png", title="canvas demo: Game of Life on the CogVideoX token grid")
    res.checkpoint, res.picture = ckpt, Path(picture)
    log("\n== 6. artifacts ==")
    log(f"loop checkpoint  {ckpt}  ({ckpt.stat().st_size / 1024:.1f} KiB: the k={arm.k} step-map loop + head)")
    log(f"canvas picture   {picture}")
