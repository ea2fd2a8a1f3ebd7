"""Running and tabulating the Game of Life loop study (shared by ``benchmarks/loop_study.py`` and
``canvas demo``; the conditions are in :mod:`canvas_core.demo.life_study`).

One *seed* runs, for every ``k`` and every kind, one training run per learning rate of the kind's
grid (:data:`LR_GRID`; a single rate when the grid was already chosen), picks the rate with the
best exact accuracy on validation boards and reports that run on the test boards: at ``steps``
(equal steps) and, for the one-pass kinds, after ``k * steps`` (equal compute: a ``k``-loop
model does ``k`` passes per step). Looped kinds are also measured at other loop counts
(test-time depth) and with adaptive exit.
"""

from __future__ import annotations

import copy
import statistics
from typing import Callable, Dict, List, Optional, Sequence


from canvas_core.demo.life_pretrain import install_life_topology
from canvas_core.demo.life_study import (KINDS, LOOPED, make_arm, predict, rollout_scores, score, study_data,
                                         train_life_arm)

__all__ = ["LR_GRID", "run_seed", "depth_counts", "main_table", "compute_table", "depth_table", "exit_table",
           "summary_lines", "EXIT_TOLS"]

#: learning rates tried per kind (small sweeps around what each kind tolerates)
LR_GRID: Dict[str, List[float]] = {"model": [1e-3, 1e-2], "stack": [1e-3, 1e-2], "block": [1e-3, 1e-2],
                                   "frozen1": [1e-3, 1e-2], "unfrozen": [3e-4, 1e-3], "deeper": [3e-4, 1e-3]}
EXIT_TOLS = (0.02, 0.1)
#: the kinds run at ``k >= lean_k`` (the looped step map and its cheapest controls)
LEAN_KINDS = ("model", "frozen1", "unfrozen")
ONE_PASS = ("frozen1", "unfrozen")


def depth_counts(k: int) -> List[int]:
    """Loop counts at which a ``k``-loop model is measured: 1 .. 2k, thinned."""
    return sorted({n for n in (1, 2, 3, 4, 6, 8, 12, 16, k - 1, k, k + 1, 2 * k) if 1 <= n <= 2 * k})


def run_seed(backbone, seed: int, ks: Sequence[int], kinds: Sequence[str], steps: int, batch_size: int,
             test: int, val: int, lrs: Optional[Dict[str, List[float]]] = None, log: Callable[[str], None] = print,
             progress: Optional[Callable] = None, exit_tols: Sequence[float] = EXIT_TOLS,
             lean_k: Optional[int] = None) -> List[dict]:
    """Every ``(k, kind)`` of one seed; returns one record per ``(k, kind)``: ``k``, ``kind``,
    ``lr``, ``trainable``, ``exact``/``cell_error`` (test, at ``steps``), for one-pass kinds
    ``compute_exact``/``compute_cell_error`` (after ``k * steps``), for looped kinds ``depth``
    (``{n: exact}``) and ``exit`` (``{tol: (exact, mean iterations)}``), ``val`` per lr, ``seconds``.
    From ``k >= lean_k`` on (the costly depths) only the kinds of :data:`LEAN_KINDS` run, each at
    the learning rate chosen for it at the largest smaller ``k`` (no sweep)."""
    data = study_data(seed, test, val, max(ks))
    lrs = LR_GRID if lrs is None else lrs
    records: List[dict] = []
    stepper = install_life_topology(copy.deepcopy(backbone))  # the plain one-step model for the rollout
    roll = rollout_scores(stepper, data.test, 2 * max(ks), ks)
    del stepper
    chosen: Dict[str, float] = {}
    for k in ks:
        lean = lean_k is not None and k >= lean_k
        records.append({"seed": seed, "k": k, "kind": "rollout", "lr": None, "trainable": 0, **roll[k - 1],
                        "depth": {n: roll[n - 1][f"vs{k}"] for n in depth_counts(k)}, "seconds": 0.0})
        for kind in kinds:
            if kind == "rollout" or (kind == "deeper" and k == 1) or (lean and kind not in LEAN_KINDS):
                continue
            best, vals = None, {}
            for lr in ([chosen[kind]] if lean and kind in chosen else lrs[kind]):
                rec = _one(backbone, data, kind, k, lr, seed, steps, batch_size, progress, exit_tols)
                vals[lr] = rec["val_exact"]
                if best is None or rec["val_exact"] > best["val_exact"]:
                    best = rec
            best["val"] = vals
            chosen[kind] = best["lr"]
            records.append(best)
            log(f"  seed {seed}  k={k}  {KINDS[kind]:<32} lr {best['lr']:g}  exact {best['exact']:.3f}  "
                f"cell error {best['cell_error']:.4f}" + (f"  (after {k * steps} steps: {best['compute_exact']:.3f})"
                                                         if "compute_exact" in best else "")
                + f"  {best['seconds']:.0f} s")
    return records


def _one(backbone, data, kind: str, k: int, lr: float, seed: int, steps: int, batch_size: int,
         progress, exit_tols) -> dict:
    arm = make_arm(backbone, kind, k, seed)
    rec: dict = {"seed": seed, "k": k, "kind": kind, "lr": lr, "trainable": arm.trainable}
    target, vtarget = data.test.target(k), data.val.target(k)

    def measure(step: int) -> None:
        rec.update(score(predict(arm, data.test.start)[0], target))
        rec["val_exact"] = score(predict(arm, data.val.start)[0], vtarget)["exact"]

    total = steps * (k if kind in ONE_PASS and k > 1 else 1)
    bar = None if progress is None else (lambda it, n: progress(it, n, f"k={k} {kind} lr {lr:g}"))
    train_life_arm(arm, data.task, total, batch_size, lr, seed, checkpoints=(steps,), on_checkpoint=measure,
                   progress=bar)
    rec["seconds"] = arm.seconds
    if total > steps:
        rec.update({"compute_" + key: v for key, v in score(predict(arm, data.test.start)[0], target).items()})
    if kind in LOOPED:
        rec["depth"] = {n: score(predict(arm, data.test.start, n)[0], target)["exact"] for n in depth_counts(k)}
        rec["exit"] = {}
        for tol in exit_tols:
            pred, iters = predict(arm, data.test.start, k, exit_tol=tol)
            rec["exit"][tol] = (score(pred, target)["exact"], iters)
    return rec


# ------------------------------------------------------------------ tables
def _ms(values: List[float], fmt: str = ".3f") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{fmt}} +- {std:{fmt}}"


def _group(records: List[dict]) -> Dict[tuple, List[dict]]:
    out: Dict[tuple, List[dict]] = {}
    for r in records:
        out.setdefault((r["k"], r["kind"]), []).append(r)
    for rows in out.values():
        rows.sort(key=lambda r: r["seed"])
    return out


def main_table(records: List[dict], ref: str = "model") -> List[str]:
    """Per ``k`` and kind: trainable parameters, learning rate(s), exact accuracy and cell error
    (mean +- std over seeds) and, per seed, the exact accuracy of ``ref`` divided by the kind's."""
    groups = _group(records)
    ks = sorted({k for k, _ in groups})
    lines = [f"{'k':>2}  {'condition':<32}{'trainable':>10}  {'lr':<9}{'exact boards':>16}{'cell error':>18}"
             f"  {ref} / this, per seed", "-" * 112]
    for k in ks:
        for kind in KINDS:
            rows = groups.get((k, kind))
            if not rows:
                continue
            lr = ",".join(sorted({f"{r['lr']:g}" for r in rows})) if rows[0]["lr"] is not None else "-"
            refs = {r["seed"]: r["exact"] for r in groups.get((k, ref), [])}
            ratio = ", ".join(_ratio(refs.get(r["seed"]), r["exact"]) for r in rows) if kind != ref and refs else ""
            lines.append(f"{k:>2}  {KINDS[kind]:<32}{rows[0]['trainable']:>10,}  {lr:<9}"
                         f"{_ms([r['exact'] for r in rows]):>16}{_ms([r['cell_error'] for r in rows], '.4f'):>18}  {ratio}")
        lines.append("")
    return lines


def _ratio(a: Optional[float], b: float) -> str:
    if a is None:
        return "-"
    return "inf" if b == 0 and a > 0 else ("1.00" if b == 0 else f"{a / b:.2f}")


def compute_table(records: List[dict], steps: int) -> List[str]:
    """Equal compute: the one-pass kinds after ``k * steps`` steps next to the looped kinds."""
    groups = _group(records)
    lines = [f"{'k':>2}  {'condition':<32}{'steps':>7}{'exact boards':>18}{'cell error':>18}", "-" * 77]
    for k in sorted({k for k, _ in groups}):
        if k == 1:
            continue
        for kind in KINDS:
            rows = groups.get((k, kind))
            if not rows or kind == "rollout":
                continue
            key = "compute_" if kind in ONE_PASS else ""
            n = k * steps if kind in ONE_PASS else steps
            lines.append(f"{k:>2}  {KINDS[kind]:<32}{n:>7}{_ms([r[key + 'exact'] for r in rows]):>18}"
                         f"{_ms([r[key + 'cell_error'] for r in rows], '.4f'):>18}")
        lines.append("")
    return lines


def depth_table(records: List[dict]) -> List[str]:
    """Exact accuracy against the ``k``-step board at other loop counts (mean over seeds)."""
    groups = _group(records)
    lines = []
    for k in sorted({k for k, _ in groups}):
        counts = depth_counts(k)
        lines.append(f"k={k}: loops  " + "".join(f"{n:>7}" for n in counts))
        for kind in ("rollout",) + LOOPED:
            rows = groups.get((k, kind))
            if not rows or "depth" not in rows[0]:
                continue
            vals = [statistics.fmean([float(r["depth"][n] if n in r["depth"] else r["depth"][str(n)])
                                      for r in rows]) for n in counts]
            name = "rollout (n steps)" if kind == "rollout" else f"{kind} loops"
            lines.append(f"  {name:<18}" + "".join(f"{v:>7.3f}" for v in vals))
    return lines


def exit_table(records: List[dict]) -> List[str]:
    """Adaptive exit (at most ``k`` iterations): exact accuracy and mean iterations used."""
    groups = _group(records)
    lines = [f"{'k':>2}  {'condition':<32}{'exit_tol':>9}{'exact boards':>18}{'iterations':>13}", "-" * 74]
    for k in sorted({k for k, _ in groups}):
        for kind in LOOPED:
            rows = groups.get((k, kind))
            if not rows:
                continue
            lines.append(f"{k:>2}  {KINDS[kind]:<32}{'0 (fixed)':>9}{_ms([r['exact'] for r in rows]):>18}{k:>13.2f}")
            for tol in rows[0]["exit"]:
                ex = [r["exit"][tol][0] for r in rows]
                it = [r["exit"][tol][1] for r in rows]
                lines.append(f"{k:>2}  {KINDS[kind]:<32}{float(tol):>9g}{_ms(ex):>18}{statistics.fmean(it):>13.2f}")
    return lines


def summary_lines(records: List[dict]) -> List[str]:
    """Plain-language comparison of the frozen ``model``-scope loops with every other condition."""
    groups = _group(records)
    lines = []
    for k in sorted({k for k, _ in groups}):
        ref = groups.get((k, "model"))
        if not ref:
            continue
        a = statistics.fmean(r["exact"] for r in ref)
        parts = []
        for kind in KINDS:
            rows = groups.get((k, kind))
            if kind == "model" or not rows:
                continue
            b = statistics.fmean(r["exact"] for r in rows)
            parts.append(f"{kind} {b:.2f}")
        lines.append(f"  k={k}: frozen + {k} loops {a:.2f} exact; " + ", ".join(parts))
    return lines
