"""Reads by value for :func:`~canvas_core.runtime.verify.verify_structure`, beside its gradient probe.

A read behind ``.detach()`` or ``torch.no_grad()`` (a statistic over every row of a call, rows of a
stacked call swapped and added back) has no gradient, so the gradient probe cannot see it.  Here the
inputs of one group of positions at a time are drawn anew by the probe's input maker (groups: the
gradient probe's query cells, split by region: one region, one frame, the same declared reads) and
every probed output position whose declared reads exclude the whole group must keep its output; a second sample drawn anew must
leave the first one's output as it was.  No backward: the perturbed copies run stacked along the
batch, 31 of them (and the unperturbed input) per forward, and one by one only when the batch rows turn out to mix.

Same tolerance and guard as the build probe's :func:`~canvas_core.runtime.type_values.value_leak`:
a change counts when it exceeds a few ulps of the output's largest magnitude, and only when the
same call on the same inputs reproduces the outputs (a non-deterministic model is noted, not blamed).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from canvas_core.runtime.type_values import _changed, value_tolerance
from canvas_core.runtime.verify_guard import check_finite, refuse_non_floating
from canvas_core.runtime.verify_probe import PositionLabels, _first_tensor, query_cells, undeclared_entries
from canvas_core.runtime.verify_report import UndeclaredDependency

__all__ = ["value_reads", "value_groups", "LARGE_CANVAS", "GROUPS_PER_PROBE", "OTHER_SAMPLE"]

#: canvases of at least this many positions value-check at most ``GROUPS_PER_PROBE * probes`` groups
LARGE_CANVAS, GROUPS_PER_PROBE = 1024, 32
#: perturbed copies per forward (with the unperturbed input as one more row), fewer when their
#: inputs would hold more than ELEMENTS_PER_CALL numbers
ROWS_PER_CALL, ELEMENTS_PER_CALL = 31, 1 << 26
#: the key region of an entry saying that one sample's output moved with another sample's inputs
OTHER_SAMPLE = "(another sample)"


def value_groups(plans: Sequence[Any], labels: PositionLabels, n: int, cap: Optional[int],
                 rng: np.random.Generator) -> List[np.ndarray]:
    """The position groups perturbed together: the query cells of every position
    (:func:`query_cells`), split by region; with ``cap``, at most ``cap`` of them, chosen at random."""
    if n == 0:
        return []
    cells = query_cells(plans, np.arange(n), labels.frame)
    _, region = np.unique(labels.region, return_inverse=True)
    _, ids = np.unique(np.stack([cells, region.reshape(-1)], axis=1), axis=0, return_inverse=True)
    ids = ids.reshape(-1)
    order = np.argsort(ids, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(ids[order]) != 0])
    groups = np.split(order, starts[1:])
    if cap is not None and len(groups) > cap:
        groups = [groups[i] for i in sorted(rng.choice(len(groups), size=cap, replace=False).tolist())]
    return groups


def _perturbed(x: torch.Tensor, group: Optional[np.ndarray], make: Callable, gen: torch.Generator) -> torch.Tensor:
    """``x`` (1, N, ...) with the inputs at ``group`` (every position for None) taken from a fresh
    draw ``make(1, gen)`` (the probe's input maker: the new values stay in the model's input domain)."""
    new = make(1, gen).detach()
    if group is None:
        return new.to(device=x.device, dtype=x.dtype)
    y = x.clone()
    ix = torch.as_tensor(group, device=x.device)
    y[:, ix] = new[:, ix.to(new.device)].to(device=y.device, dtype=y.dtype)
    return y


def _call(fn: Callable, x: torch.Tensor, finite: bool = True) -> torch.Tensor:
    """``fn(x)`` without gradients; with ``finite``, a NaN or infinite output is refused."""
    with torch.no_grad():
        out = _first_tensor(fn(x))
    if finite:
        check_finite(out, "output")
    return out.detach()


def _finite_rows(out: torch.Tensor) -> np.ndarray:
    """``(b,)`` bool: the batch rows of ``out`` (b, N, ...) holding only finite numbers."""
    if not out.is_floating_point():
        return np.ones(out.shape[0], dtype=bool)
    return torch.isfinite(out.reshape(out.shape[0], -1)).all(-1).cpu().numpy()


def _rows_changed(base: torch.Tensor, out: torch.Tensor, tol: float) -> np.ndarray:
    """``(b, N)`` bool: the output positions of ``out`` (b, N, ...) that moved from ``base``."""
    b, n = out.shape[:2]
    return _changed(base.reshape(base.shape[0], n, -1), out.reshape(b, n, -1), tol).cpu().numpy()


def _amount(base: torch.Tensor, out: torch.Tensor) -> np.ndarray:
    """``(N,)``: per output position, its largest change over the largest output magnitude."""
    n = out.shape[1]
    diff = (base.reshape(1, n, -1) - out.reshape(1, n, -1)).abs().nan_to_num(float("inf")).amax(-1)[0]
    return (diff / (float(base.abs().max()) or 1.0)).double().cpu().numpy()


class _Check:
    """One value check of one probed function ``fn`` on one input ``x`` (1, N, ...).  Copy 0 is ``x``
    with the whole sample drawn anew, copy ``j`` ``x`` with group ``j - 1`` drawn anew; copies are
    made when run (a large canvas holds no more than one forward's worth)."""

    def __init__(self, fn: Callable, x: torch.Tensor, groups: List[np.ndarray], make: Callable,
                 gen: torch.Generator, ref: Optional[torch.Tensor]) -> None:
        self.fn, self.x, self.groups, self.make = fn, x, groups, make
        self.seed = int(torch.randint(0, 2 ** 62, (1,), generator=gen))
        self.rows = max(1, min(ROWS_PER_CALL, ELEMENTS_PER_CALL // max(1, x.numel())))
        self.ref = _call(fn, x) if ref is None else ref.detach()
        refuse_non_floating(self.ref, "the probed output")  # value_tolerance needs a floating dtype
        check_finite(self.ref, "output")
        self.tol = value_tolerance(self.ref)
        self.mixes, self.mixed = False, None
        self.non_finite: List[int] = []  # copies whose output had a NaN or infinity: their groups go unchecked

    def copy(self, j: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed + j)
        return _perturbed(self.x, None if j == 0 else self.groups[j - 1], self.make, gen)

    def outputs(self) -> Iterator[Tuple[int, torch.Tensor, torch.Tensor]]:
        """``(j, output of x, output of copy j)`` for every group copy ``j >= 1``: ``rows`` copies per
        forward with ``x`` itself as row 0, until the rows of a batch turn out to mix (``x``'s row
        moved with the others, and not merely by another batch size's rounding); from then on, and
        for that batch again, one copy per forward at batch 1 against the batch-1 reference.  A copy
        whose output is not finite is not yielded but kept in ``non_finite``."""
        j, count = 0, len(self.groups) + 1
        while j < count:
            if self.mixes:
                if j:
                    out = _call(self.fn, self.copy(j), finite=False)
                    if _finite_rows(out)[0]:
                        yield j, self.ref, out
                    else:
                        self.non_finite.append(j)
                j += 1
                continue
            idx = list(range(j, min(j + self.rows, count)))
            got = _call(self.fn, torch.cat([self.x] + [self.copy(i) for i in idx]), finite=False)
            finite = _finite_rows(got)
            if _rows_changed(self.ref, got[:1], self.tol).any():
                same = _call(self.fn, torch.cat([self.x] * (len(idx) + 1)))
                if _rows_changed(same[:1], got[:1], self.tol).any():
                    self.mixes, self.mixed = True, got[:1]
                    continue
            for r, i in enumerate(idx, 1):
                if i and finite[r]:
                    yield i, got[:1], got[r:r + 1]
                elif i:
                    self.non_finite.append(i)
            j = idx[-1] + 1

    def reproducible(self) -> bool:
        """The guard: the reference call on the original input gives the same output again."""
        return not _rows_changed(self.ref, _call(self.fn, self.x), self.tol).any()


def value_reads(run: Any, where: str, f: Optional[str], fn: Callable, make: Callable, plans: Sequence[Any],
                queries: np.ndarray, allowed: np.ndarray, labels: PositionLabels,
                skip: Optional[np.ndarray] = None, candidates: Optional[Callable[[int], Tuple[str, ...]]] = None,
                ref: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> np.ndarray:
    """Check ``fn`` (``(b, N, ...) -> (b, N, ...)``) by value; adds ``by="value"`` entries to
    ``run.undeclared`` and returns the ``(nq, N)`` bool reads it found.  ``allowed``: the declared
    rows of ``queries``; ``skip``: reads the gradient already reported (a query whose output moved
    with a group it reads undeclared by gradient is not reported again); ``ref``: ``(x, fn(x))`` of
    a forward already made at batch 1 (else ``make`` draws ``x`` and one more call is made)."""
    n = int(plans[0].n)
    cap = GROUPS_PER_PROBE * run.probes if n >= LARGE_CANVAS else None
    groups = value_groups(plans, labels, n, cap, run.value_rng)
    x, out = (ref[0], _first_tensor(ref[1])) if ref is not None else (make(1, run.value_gen), None)
    check = _Check(fn, x.detach(), groups, make, run.value_gen, out)
    found = np.zeros(allowed.shape, dtype=bool)
    strength = np.zeros(allowed.shape, dtype=np.float64)
    for j, base, moved_out in check.outputs():
        g = groups[j - 1]
        moved = _rows_changed(base, moved_out, check.tol)[0][queries] & ~allowed[:, g].any(axis=1)
        if skip is not None:
            moved &= ~skip[:, g].any(axis=1)
        if moved.any():
            qi = np.flatnonzero(moved)
            amount = np.maximum(_amount(base, moved_out)[queries[qi]], 1e-300)[:, None]
            found[np.ix_(qi, g)] = True
            strength[np.ix_(qi, g)] = np.maximum(strength[np.ix_(qi, g)], amount)
    other = np.zeros(len(queries), dtype=bool)
    if check.mixes:  # the other rows of a batch moved x's own output: at which positions
        other = _rows_changed(check.ref, check.mixed, check.tol)[0][queries]
    if (found.any() or other.any()) and not check.reproducible():
        run.notes.append(f"{where}: value check skipped: the same input gives another output on a second call "
                         "(a non-deterministic model), so no changed output can be blamed on a read")
        return np.zeros(allowed.shape, dtype=bool)
    if check.non_finite:
        run.notes.append(_non_finite_note(where, f, [groups[j - 1] for j in check.non_finite], labels))
    entries, _ = undeclared_entries(where, f, strength, allowed, queries, labels, 0.0, candidates)
    run.undeclared += [dataclasses.replace(e, by="value") for e in entries]
    if other.any():
        amount = _amount(check.ref, check.mixed)
        said = {(d.where, d.query_region, d.query_frame) for d in run.undeclared if d.key_region == OTHER_SAMPLE}
        run.undeclared += [d for d in _other_sample(where, f, queries, other, amount, labels, candidates)
                           if (d.where, d.query_region, d.query_frame) not in said]  # a group's, then the whole's
    return found


def _other_sample(where: str, f: Optional[str], queries: np.ndarray, moved: np.ndarray, amount: np.ndarray,
                  labels: PositionLabels, candidates: Optional[Callable]) -> List[UndeclaredDependency]:
    """One entry per (region, frame) of sample 0 whose output moved when only sample 1 changed."""
    cells: dict = {}
    for q in queries[moved].tolist():
        key = (str(labels.region[q]), int(labels.frame[q]))
        count, top, first = cells.get(key, (0, 0.0, q))
        cells[key] = (count + 1, max(top, float(amount[q])), first)
    return [UndeclaredDependency(where, f, r, t, OTHER_SAMPLE, -1, False, count, top,
                                 () if candidates is None else candidates(first), by="value")
            for (r, t), (count, top, first) in sorted(cells.items())]


def _non_finite_note(where: str, f: Optional[str], skipped: List[np.ndarray], labels: PositionLabels) -> str:
    """The note for position groups left unchecked by value: their redrawn copy gave a NaN or infinity."""
    cells = sorted({(str(labels.region[g[0]]), int(labels.frame[g[0]])) for g in skipped})
    shown = ", ".join(f"{r!r} frame {t}" for r, t in cells[:4]) + (", ..." if len(cells) > 4 else "")
    part = where if f is None else f"{where} fn {f!r}"
    return (f"{part}: value check skipped for {len(skipped)} position group(s) ({shown}): with their inputs "
            "drawn anew (by make_input, where one is given) the output holds NaN or infinite values where the "
            "original input's does not; a make_input that draws only inputs the model takes checks them")
