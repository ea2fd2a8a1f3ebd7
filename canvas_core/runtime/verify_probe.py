"""The machinery of :func:`canvas_core.verify_structure`: declared patterns, gradient probes, and
turning what they saw into report entries.

* :func:`declared_rows` -- rows of a plan's (weighted, here boolean) pattern for a set of query
  positions, optionally for one fn group or one connection, composed over several layers
  (reachability): ``R <- R | R @ M`` per layer, computed on the plan's segment grid, so no
  ``N x N`` array is made.
* :func:`probe_rows` -- which inputs each query position's output depends on: randomized
  vector-Jacobian products, a chunk of cotangents per forward pass at batch 1 pulled back in one
  batched backward (else one per batch row; a model that mixes its batch rows is probed one at a
  time); the queries of a cell (:func:`query_cells`: same frame, same declared reads) are probed
  together first, and one by one only when together they read something undeclared.
* :func:`undeclared_entries` / :func:`dead_entries` -- the report entries.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from canvas_core.compiler.plan import segment_grid
from canvas_core.runtime.verify_guard import check_finite
from canvas_core.runtime.verify_report import DeadLink, UndeclaredDependency

__all__ = ["checked_input", "declared_rows", "probe_rows", "PositionLabels", "undeclared_entries", "dead_entries",
           "choose_queries", "query_cells", "linked_connections"]


# --- declared patterns ---------------------------------------------------------------------------
def _step(R: np.ndarray, plan: Any, keep: Optional[np.ndarray]) -> np.ndarray:
    """``R @ M`` (bool) for canonical rows ``R`` (nq, N) and the plan's rectangles selected by
    ``keep`` (all when None), via the segment grid: rows summed per row segment, times the grid,
    expanded over column segments."""
    n = int(plan.n)
    g = plan.all_rects()
    if keep is not None:
        g = g.select(keep)
    out = np.zeros_like(R)
    if n == 0 or g.n_rects == 0 or not R.any():
        return out
    sg = segment_grid(n, g.q0, g.q1, g.k0, g.k1, g.weight)
    # bool throughout, float32 only for the product (a sum of 0 / 1 products is > 0 exactly when
    # one term is 1, at any rounding): int64 / float64 copies took 8x the memory of the rows
    seg = np.logical_or.reduceat(R[:, plan.perm], sg.row_bounds[:-1], axis=1)  # (nq, n_rs)
    reach = (seg.astype(np.float32) @ (sg.grid > 0).astype(np.float32)) > 0  # (nq, n_cs)
    cols_packed = reach[:, sg.col_segment_of(n)]  # (nq, N) packed
    out[:, :] = cols_packed[:, plan.inv_perm]
    return out


def declared_rows(plans: Sequence[Any], queries: np.ndarray, *, fn: Optional[str] = None,
                  connection: Optional[int] = None, with_self: bool = True) -> np.ndarray:
    """``(nq, N)`` bool: which inputs the outputs at canonical ``queries`` may read after the layers
    of ``plans`` (in order of application; one plan = one layer).  With ``fn`` / ``connection``,
    only that group's / connection's rectangles (one layer).  ``with_self``: a position always
    reads itself (its own query, or passing through unchanged).  With ``with_self``, the
    composition stops once ``R`` is closed under every plan of ``plans``: more layers add nothing."""
    n = int(plans[0].n)
    R = np.zeros((len(queries), n), dtype=bool)
    R[np.arange(len(queries)), queries] = True
    distinct, closed = {id(p) for p in plans}, set()  # plans R is closed under (R | R M = R)
    for plan in reversed(list(plans)):  # out = L_k(...L_1(x)): rows propagate from the last layer
        if with_self and closed >= distinct:
            break
        keep = None
        if fn is not None or connection is not None:
            rects = plan.all_rects()
            keep = np.ones(rects.n_rects, dtype=bool)
            if fn is not None:
                keep &= np.concatenate([np.full(g.n_rects, f == fn) for f, g in plan.groups.items()]
                                       or [np.zeros(0, dtype=bool)])
            if connection is not None:
                keep &= rects.conn == connection
        step = _step(R, plan, keep)
        if with_self:  # (no (nq, N) temporary beyond one comparison: the rows are the memory here)
            grown = bool(np.greater(step, R).any())
            R = np.logical_or(R, step, out=step)
        else:
            grown, R = True, step
        closed = closed | {id(plan)} if not grown else set()
    return R


def linked_connections(plan: Any) -> set:
    """Indices of the connections that link at least one (query, key) pair on ``plan``'s layout
    (a rectangle of positive area and weight); the others link nothing (offsets past the regions'
    frames, a mask that selects nothing)."""
    g = plan.all_rects()
    live = (g.q1 > g.q0) & (g.k1 > g.k0) & (g.weight > 0)
    return {int(c) for c in np.unique(g.conn[live])}


# --- labels --------------------------------------------------------------------------------------
class PositionLabels:
    """Region label, canvas frame and real frame of each position (canonical order, or the order
    of ``index``: position k of the probed sequence is canvas position ``index[k]``)."""

    def __init__(self, layout: Any, index: Optional[Sequence[int]] = None) -> None:
        n = int(layout.num_positions)
        sv = int(layout.spatial_volume)
        names: List[List[str]] = [[] for _ in range(n)]
        period = np.ones(n, dtype=np.int64)
        for name, spec in layout.regions.items():
            idx = np.asarray(layout.region_indices(name), dtype=np.int64)
            for i in idx.tolist():
                names[i].append(name)
            fresh = idx[period[idx] == 1] if len(idx) else idx
            period[fresh] = int(getattr(spec, "period", 1) or 1)
        labels = np.array(["/".join(x) if x else "(uncovered)" for x in names], dtype=object)
        frame = np.arange(n, dtype=np.int64) // max(sv, 1)
        if index is not None:
            idx = np.asarray(index, dtype=np.int64)
            labels, frame, period = labels[idx], frame[idx], period[idx]
        self.region, self.frame, self.real = labels, frame, frame * period


def choose_queries(n: int, labels: PositionLabels, max_exact: int, samples: int,
                   rng: np.random.Generator) -> Tuple[np.ndarray, bool, str]:
    """(query positions, exact, sentence): every position when ``n <= max_exact``; else one
    random position of every (region, frame) cell, then uniform random ones up to ``samples``
    (with more cells than ``samples``: one in each of ``samples`` cells chosen at random)."""
    if n <= max_exact:
        return np.arange(n), True, f"every one of the {n} query positions probed"
    cells: Dict[Tuple[str, int], List[int]] = {}
    for i, key in enumerate(zip(labels.region.tolist(), labels.frame.tolist())):
        cells.setdefault(key, []).append(i)
    groups = list(cells.values())
    if len(groups) > samples:  # more cells than samples: `samples` cells, chosen at random
        chosen = rng.choice(len(groups), size=samples, replace=False)
        picked = {int(rng.choice(groups[i])) for i in chosen.tolist()}
        q = np.array(sorted(picked), dtype=np.int64)
        why = (f"sampled {len(q)} of {n} query positions: one at random in each of {len(q)} of the "
               f"{len(groups)} (region, frame) cells, chosen at random (samples={samples}; pass "
               f"samples={len(groups)} to probe every cell); every input position is checked for each "
               "sampled query")
        return q, False, why
    picked = {int(rng.choice(v)) for v in groups}
    rest = samples - len(picked)
    if rest > 0:
        pool = np.setdiff1d(np.arange(n), np.fromiter(picked, dtype=np.int64))
        picked |= set(rng.choice(pool, size=min(rest, len(pool)), replace=False).tolist())
    q = np.array(sorted(picked), dtype=np.int64)
    why = (f"sampled {len(q)} of {n} query positions: one at random in each of the {len(cells)} "
           f"(region, frame) cells, the rest uniformly at random; every input position is checked "
           "for each sampled query")
    return q, False, why


# --- gradient probes -----------------------------------------------------------------------------
def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    from canvas_core.errors import CanvasTypeError

    raise CanvasTypeError(f"verify_structure: the model returned {type(out).__name__}; it must return a "
                          "(B, N, D) tensor (or a tuple / list holding some: each is probed)")


def _refuse_tokens(x: torch.Tensor, b: int, n: int, where: str) -> None:
    """Integer / bool draws (token ids) are refused: the probe differentiates the output with
    respect to the input, and a token id has no gradient (nor a nearby value to perturb to)."""
    from canvas_core.errors import CanvasTypeError

    raise CanvasTypeError(
        f"verify_structure: make_input({b}, generator) returned a {x.dtype} tensor (token ids?); the probe "
        "takes gradients with respect to the input and redraws its values, which token ids do not allow. Verify "
        f"{where} from its embeddings: pass a module whose forward takes the embedded (b, {n}, D) canvas "
        "(the model after its token embedding) and a make_input that returns embeddings, e.g. "
        f"embed(torch.randint(0, vocab, (b, {n}), generator=generator)).detach() or torch.randn(b, {n}, D, "
        "generator=generator)")


def checked_input(make_input: Callable, n: int, where: str, width: Optional[int] = None,
                   device: Any = None, dtype: Any = None) -> Callable[[int, torch.Generator], torch.Tensor]:
    """``make_input`` with every draw checked: a floating tensor of shape ``(b, n, ...)`` (with
    ``width``: exactly ``(b, n, width)``; with ``device`` / ``dtype``: on that device, of that dtype),
    else a ``ShapeError`` / ``CanvasTypeError`` naming ``make_input`` and what ``where`` takes."""
    from canvas_core.errors import CanvasTypeError, ShapeError

    def make(b: int, gen: torch.Generator) -> torch.Tensor:
        x = make_input(b, gen)
        want = f"({b}, {n}, {width if width is not None else 'D'})"
        if isinstance(x, torch.Tensor) and not x.is_floating_point() and not x.is_complex():
            _refuse_tokens(x, b, n, where)
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = type(x).__name__ if not isinstance(x, torch.Tensor) else f"a {x.dtype} tensor"
            raise CanvasTypeError(f"verify_structure: make_input({b}, generator) returned {got}; {where} takes "
                                  f"floating {want} inputs: return torch.randn({want[1:-1]}, generator=generator)")
        if (width is not None and x.dim() != 3) or x.dim() < 2 or tuple(x.shape[:2]) != (b, n) or (
                width is not None and x.shape[2] != width):
            raise ShapeError(f"verify_structure: make_input({b}, generator) returned shape {tuple(x.shape)}; {where} "
                             f"takes {want} inputs (batch {b}, {n} canvas positions): draw inputs of that shape")
        if (device is not None and x.device != device) or (dtype is not None and x.dtype != dtype):
            raise CanvasTypeError(f"verify_structure: make_input({b}, generator) returned a {x.dtype} tensor on "
                                  f"{x.device}; {where} holds {dtype} weights on {device}: return "
                                  f"x.to(device={str(device)!r}, dtype={dtype})")
        return x
    return make


def mixes_batch(fn: Callable, make_input: Callable[[int, torch.Generator], torch.Tensor],
                gen: torch.Generator) -> bool:
    """Whether the outputs of batch row 0 depend on batch row 1."""
    x = make_input(2, gen).requires_grad_(True)
    out = _first_tensor(fn(x))
    check_finite(out, "output")
    if not out.requires_grad:
        return False
    cot = torch.zeros_like(out)
    cot[0] = torch.randn(out.shape[1:], generator=gen, dtype=out.dtype).to(out.device)
    (g,) = torch.autograd.grad(out, x, cot, allow_unused=True)
    check_finite(g, "gradient")
    return g is not None and bool(g[1].abs().max() > 0)


def _shape_error(out: torch.Tensor, x: torch.Tensor, b: int, n: int) -> None:
    if out.dim() < 2 or out.shape[0] != b or out.shape[1] != n:
        from canvas_core.errors import ShapeError

        raise ShapeError(f"verify_structure: the probed output has shape {tuple(out.shape)}; expected "
                         f"({b}, {n}, ...) for an input of shape {tuple(x.shape)}")


def _relative(g: torch.Tensor, b: int, n: int) -> np.ndarray:
    """``(b, n)``: per row, each input position's largest gradient magnitude over the largest one."""
    mag = g.detach().abs().reshape(b, n, -1).amax(-1).double()
    mag = torch.nan_to_num(mag, nan=float("inf"))
    top = mag.amax(-1, keepdim=True)
    rel = torch.where(top > 0, mag / top.clamp_min(1e-300), torch.zeros_like(mag))
    rel = torch.where(torch.isinf(mag), torch.ones_like(rel), rel)
    return rel.cpu().numpy()


def _vjp(fn: Callable, make_input: Callable, rows: Sequence[np.ndarray], n: int, gen: torch.Generator,
         batched: bool) -> Optional[torch.Tensor]:
    """The gradients of one random cotangent per item of ``rows``, ``(b, n, D)``, or None when the
    output has no gradient; item ``r`` is nonzero at the outputs of the query positions
    ``rows[r]`` only (one position: that query's vector-Jacobian product; several: the sum of
    theirs).  ``batched``: one forward at batch 1 and the ``b`` cotangents pulled back together
    (``is_grads_batched``; raises -- RuntimeError, or the warning turned error -- when the model
    cannot be vmapped); else batch row ``r``, its own input, carries cotangent ``r``."""
    b = len(rows)
    x = make_input(1 if batched else b, gen).requires_grad_(True)
    out = _first_tensor(fn(x))
    _shape_error(out, x, x.shape[0], n)
    check_finite(out, "output")  # a NaN would read as a dependency on every input: named instead
    if not out.requires_grad:
        return None
    cot = torch.zeros(((b,) if batched else ()) + tuple(out.shape), dtype=out.dtype, device=out.device)
    sizes = [len(r) for r in rows]
    which = torch.as_tensor(np.repeat(np.arange(b), sizes), device=out.device)
    qi = torch.as_tensor(np.concatenate(list(rows)).astype(np.int64), device=out.device)
    noise = torch.randn((len(qi),) + tuple(out.shape[2:]), generator=gen, dtype=out.dtype).to(out.device)
    if batched:
        cot[which, 0, qi] = noise
    else:
        cot[which, qi] = noise
    (g,) = torch.autograd.grad(out, x, cot, allow_unused=True, is_grads_batched=batched)
    check_finite(g, "gradient")
    return None if g is None else (g[:, 0] if batched else g)


def _grads(fn: Callable, make_input: Callable, rows: Sequence[np.ndarray], n: int, gen: torch.Generator,
           shared: bool) -> Tuple[Optional[torch.Tensor], bool]:
    """:func:`_vjp` of ``rows``, batched while ``shared`` holds; a model autograd cannot batch
    turns ``shared`` off (returned) and is probed one batch row per item, drawing what the
    batched try would have drawn."""
    import warnings

    from canvas_core.errors import CanvasError

    if shared:
        state = gen.get_state()
        try:
            with warnings.catch_warnings():
                # a vmap fallback (per-sample loop) is slower than the copies: treat it as unsupported
                warnings.filterwarnings("error", message=".*(batching rule|vmap).*")
                return _vjp(fn, make_input, rows, n, gen, batched=True), True
        except CanvasError:
            raise
        except (RuntimeError, NotImplementedError, UserWarning):
            gen.set_state(state)
    return _vjp(fn, make_input, rows, n, gen, batched=False), False


def query_cells(plans: Sequence[Any], queries: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """A cell number per query: queries of one cell share a frame and a row segment of every plan
    (rows that every rectangle covers whole or not at all), so they may read the same positions
    besides themselves (``declared_rows`` differ only on the diagonal)."""
    keys = [np.asarray(frames)[queries]]
    seen: set = set()
    for plan in plans:
        if id(plan) in seen:
            continue
        seen.add(id(plan))
        r, n = plan.all_rects(), int(plan.n)
        bounds = np.unique(np.concatenate([[0, n], r.q0, r.q1]).astype(np.int64))
        keys.append(np.searchsorted(bounds, np.asarray(plan.inv_perm)[queries], side="right"))
    _, ids = np.unique(np.stack(keys, axis=1), axis=0, return_inverse=True)
    return ids.reshape(-1)


def probe_rows(fn: Callable, make_input: Callable[[int, torch.Generator], torch.Tensor], queries: np.ndarray,
               n: int, *, probes: int, chunk: int, gen: torch.Generator,
               on_chunk: Optional[Callable[[int, int], None]] = None, cells: Optional[np.ndarray] = None,
               allowed: Optional[np.ndarray] = None) -> np.ndarray:
    """``(nq, n)`` float: per query, the largest relative gradient magnitude of each input position
    over ``probes`` random inputs and cotangents (0: the output never depended on it).

    ``fn(x (b, n, D)) -> (b, n, D')``; ``make_input(b, gen)`` draws ``x``.  ``chunk`` cotangents
    share one forward pass at batch 1 and one batched backward (``is_grads_batched``: their
    vector-Jacobian products, computed together); a model autograd cannot batch that way (an
    operation without a vmap rule) is probed with one batch row, and its own input, per cotangent
    instead (what ``chunk=1`` always does).

    ``cells`` (a number per query, :func:`query_cells`) with ``allowed`` (``(nq, n)`` bool, the
    declared rows): the queries of a cell are first probed together, by one cotangent spread over
    all of their outputs (the sum of their products).  When that reads nothing outside what every
    one of them may read, each of them gets the cell's row (no query read anything undeclared;
    a sum of products with independent random cotangents is 0 at an input only when each is);
    otherwise the cell's queries are probed one by one, as without ``cells``.  So a cell costs one
    backward instead of one per query, and a read outside the declaration is still measured per
    query.  ``on_chunk(done, total)`` follows the progress (query probes done of ``probes *
    len(queries)``)."""
    nq = len(queries)
    strength = np.zeros((nq, n), dtype=np.float64)
    shared = chunk > 1
    groups: List[np.ndarray] = []
    if cells is not None and allowed is not None and nq:
        order = np.argsort(cells, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(np.asarray(cells)[order]) != 0])
        groups = [g for g in np.split(order, starts[1:]) if len(g) > 1]
    total = probes * nq

    def report(done: int) -> None:
        if on_chunk is not None:
            on_chunk(done, total)

    for probe in range(probes):
        todo = np.ones(nq, dtype=bool)
        done = probe * nq
        for start in range(0, len(groups), chunk):
            part = groups[start:start + chunk]
            g, shared = _grads(fn, make_input, [queries[m] for m in part], n, gen, shared)
            for r, members in enumerate(part):
                if g is not None:
                    mag = g[r].detach().abs().reshape(n, -1).amax(-1).double().cpu().numpy()
                    outside = ~allowed[members].all(axis=0)
                    if not np.isfinite(mag).all() or (mag[outside] > 0).any():
                        continue  # probed one by one below
                    rel = _relative(g[r:r + 1], 1, n)
                    strength[members] = np.maximum(strength[members], rel)
                todo[members] = False
                done += len(members)
            report(done)
        left = np.flatnonzero(todo)
        for start in range(0, len(left), chunk):
            idx = left[start:start + chunk]
            g, shared = _grads(fn, make_input, [queries[i:i + 1] for i in idx], n, gen, shared)
            if g is not None:
                strength[idx] = np.maximum(strength[idx], _relative(g, len(idx), n))
            done += len(idx)
            report(done)
    return strength


# --- report entries -------------------------------------------------------------------------------
def undeclared_entries(where: str, fn: Optional[str], strength: np.ndarray, allowed: np.ndarray,
                       queries: np.ndarray, labels: PositionLabels, rtol: float,
                       candidates: Optional[Callable[[int], Tuple[str, ...]]] = None,
                       skip: Optional[np.ndarray] = None) -> Tuple[List[UndeclaredDependency], np.ndarray]:
    """Entries for reads outside ``allowed`` (``(nq, n)`` bool); also returns the bool matrix of
    those reads.  ``skip``: pairs already reported elsewhere."""
    bad = (strength > rtol) & ~allowed
    if skip is not None:
        bad &= ~skip
    qi, ki = np.nonzero(bad)
    entries: List[UndeclaredDependency] = []
    if len(qi):
        qpos = queries[qi]
        codes, region_code = np.unique(labels.region, return_inverse=True)
        rows = np.stack([region_code[qpos], labels.frame[qpos], region_code[ki], labels.frame[ki]], axis=1)
        uniq, inv = np.unique(rows, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        count = np.bincount(inv, minlength=len(uniq))
        top = np.zeros(len(uniq))
        np.maximum.at(top, inv, strength[qi, ki])
        fut = np.zeros(len(uniq), dtype=bool)
        np.logical_or.at(fut, inv, labels.real[ki] > labels.real[qpos])
        first = np.full(len(uniq), -1, dtype=np.int64)
        first[inv[::-1]] = qpos[::-1]  # a query of each group (for the fn candidates)
        for g, (qr, qf, kr, kf) in enumerate(uniq.tolist()):
            entries.append(UndeclaredDependency(
                where, fn, str(codes[qr]), int(qf), str(codes[kr]), int(kf), bool(fut[g]), int(count[g]),
                float(top[g]), () if candidates is None else candidates(int(first[g]))))
    entries.sort(key=lambda d: (not d.future, d.query_region, d.query_frame, d.key_region, d.key_frame))
    return entries, bad


def dead_entries(where: str, plan: Any, strength: np.ndarray, queries: np.ndarray, labels: PositionLabels,
                 rtol: float, connections: Optional[Sequence[int]] = None, group_of: Any = None) -> List[DeadLink]:
    """One :class:`DeadLink` per connection with a (query frame, key frame) cell in which no
    probed declared pair carries signal, and a whole one (``checked_cells`` 0) per connection
    that links no pair at all on the plan's layout (it can carry no signal, whatever is probed).
    ``group_of(ci)``: the strength matrix to judge connection ``ci`` by (default ``strength``)."""
    topo = plan.topology
    out: List[DeadLink] = []
    linked = linked_connections(plan)
    pairs = _ConnectionPairs(plan, queries)
    for ci in (range(len(plan.fn_of_connection)) if connections is None else connections):
        fn = plan.fn_of_connection[ci]
        if ci not in linked:
            c = topo.connections[ci]
            out.append(DeadLink(where, ci, c.src, c.dst, fn, (), True, 0))
            continue
        qi, ki = pairs.of(ci)
        if not len(qi):
            continue  # links pairs, none of them at a sampled query
        s = strength if group_of is None else group_of(ci)
        qf = labels.frame[queries[qi]]
        kf = labels.frame[ki]
        live = s[qi, ki] > rtol
        cells, inv = np.unique(np.stack([qf, kf], axis=1), axis=0, return_inverse=True)
        alive = np.zeros(len(cells), dtype=bool)
        np.logical_or.at(alive, inv.reshape(-1), live)
        dead = tuple((int(a), int(b)) for a, b in cells[~alive].tolist())
        if dead:
            c = topo.connections[ci]
            out.append(DeadLink(where, ci, c.src, c.dst, fn, dead, len(dead) == len(cells), len(cells)))
    return out


class _ConnectionPairs:
    """The declared (query row, canonical key) pairs of one connection at a time, read from its own
    rectangles: ``declared_rows(..., connection=ci)`` built a segment grid of every rectangle and an
    ``(nq, N)`` matrix per connection, O(connections x (rectangles + nq N)) for a dead-link pass."""

    def __init__(self, plan: Any, queries: np.ndarray) -> None:
        r = plan.all_rects()
        live = (r.q1 > r.q0) & (r.k1 > r.k0) & (r.weight > 0)
        idx = np.flatnonzero(live)
        by_conn = np.argsort(r.conn[idx], kind="stable")
        self.rect = idx[by_conn]  # rectangle indices, grouped by connection
        conns = r.conn[self.rect]
        self.conn_ids, self.first = np.unique(conns, return_index=True)
        self.last = np.r_[self.first[1:], len(self.rect)]
        self.r, self.perm = r, np.asarray(plan.perm, dtype=np.int64)
        packed = np.asarray(plan.inv_perm, dtype=np.int64)[np.asarray(queries, dtype=np.int64)]
        self.q_order = np.argsort(packed, kind="stable")  # query rows by packed position
        self.q_sorted = packed[self.q_order]

    def of(self, ci: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(qi, ki)``: the query rows and canonical keys of every pair connection ``ci`` declares
        (a pair covered by two rectangles may repeat)."""
        at = int(np.searchsorted(self.conn_ids, ci))
        if at == len(self.conn_ids) or self.conn_ids[at] != ci:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        qs, ks = [], []
        r = self.r
        for j in self.rect[self.first[at]:self.last[at]].tolist():
            a, z = np.searchsorted(self.q_sorted, [r.q0[j], r.q1[j]])
            if z <= a:
                continue
            rows, keys = self.q_order[a:z], self.perm[r.k0[j]:r.k1[j]]
            qs.append(np.repeat(rows, len(keys)))
            ks.append(np.tile(keys, len(rows)))
        if not qs:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(qs), np.concatenate(ks)
