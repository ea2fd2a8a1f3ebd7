"""Telemetry: what a canvas model does with its topology, as a flat dict of numbers.

Off by default and free when off: nothing is registered on a model until a recording starts, and
everything is removed when it ends.

* :func:`record_telemetry` -- a context manager; every forward inside it is measured::

      with canvas_core.record_telemetry(model) as tel:
          loss = loss_fn(model(x), y)
          loss.backward()
      logger.log(tel.values())          # {"layers.0.attn/#1 action->video [cross_attention]/mass_share": 0.31, ...}

* :func:`telemetry` -- one forward (no gradient) and its numbers in one call.

What is measured (averaged over the sampled queries of the recorded forwards: whole-canvas calls
with a non-empty batch, and a rollout's steps, each at the queries of its frame; a call restricted
to some regions, an empty batch, the full forward of ``incremental(check=...)`` and the
recomputation of activation checkpointing in backward add nothing, nor does a sample that is not
finite at a query; ``Telemetry.forwards`` counts the model calls in which some canvas layer was
measured):

* ``<layer>/#<i> <src>-><dst> [<fn>]/mass_share`` -- for every connection of every canvas layer
  (``CanvasAttention`` and its subclasses), the share of the layer's output at the queries the
  connection links that comes through it: ``c_f(p) * m_c(p)`` averaged over those queries, with
  ``c_f(p) = W_f(p) / sum_g W_g(p)`` the mixing share of its fn type and ``m_c(p)`` the softmax
  mass on the connection's keys (softmax family), or the connection's share ``w_c(p) / W_f(p)``
  of its type's weight (other types, whose modules do not expose per-key weights).  A pair that
  two connections of one type link counts for the one with the larger weight.  At a query, the
  shares of all connections sum to 1.
* ``<layer>/#<i> ...[<fn>]/out_norm`` -- the norm of that connection's part of the output at its
  queries: ``c_f(p) * ||sum_{j in c} a_pj v_j||`` (softmax family; heads concatenated, before the
  output projection), or its weight share times the mean row norm of its type's module output.
* ``gate/<parameter name>`` -- every parameter whose name contains ``gate`` (loop gates per block
  and loop, the type gates of a backbone's topology branches, span injection and adapter gates):
  each element for up to 16 elements (``.../<k>``), else ``/mean`` and ``/absmax``.

Queries are sampled (``max_queries`` per layer, evenly spaced over the updated positions; all of
them when the layer has fewer), so the cost of a recorded forward stays a small multiple of the
forward itself; a rollout step runs ``qkv`` on its new frame only and reads the keys its queries link.
"""

from __future__ import annotations

import math
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from canvas_core.errors import CanvasTypeError
from canvas_core.runtime.compiled_names import plain_name, wrapped_paths
from canvas_core.runtime.incremental import frames_measured, observe_steps
from canvas_core.runtime.plan_runner import plan_query_weights
from canvas_core.runtime.rollout_plan import frame_size
from canvas_core.schema._validate import is_int

__all__ = ["Telemetry", "record_telemetry", "telemetry"]

_MAX_ELEMENTS = 16
_CHUNK_ELEMENTS = 1 << 20  # (B * H * queries * connections * keys) per chunk of the softmax probe (cache-sized)


class _Mean:
    __slots__ = ("total", "count")

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, value: float, weight: int = 1) -> None:
        self.total += float(value) * weight
        self.count += weight

    @property
    def value(self) -> float:
        return self.total / self.count if self.count else 0.0


def _series_name(name: str, modules: Dict[str, nn.Module], wrapped: FrozenSet[str] = frozenset()) -> str:
    """A layer's name as the plain model has it, so logged series go on across ``torch.compile``,
    ``DistributedDataParallel`` and grafting: without the segments of those wrappers (``wrapped``,
    from :func:`wrapped_paths`) and the ``original`` under which a looped-block wrapper
    (``canvas_core.looping``; duck-typed) holds the block."""
    parts, keep = name.split(".") if name else [], []
    for i, part in enumerate(parts):
        parent = modules.get(".".join(parts[:i]))
        if ".".join(parts[:i + 1]) in wrapped:
            continue
        if not (part == "original" and hasattr(parent, "max_loops")):
            keep.append(part)
    return plain_name(".".join(keep))  # and without the compile wrapper's segments


def _forget(kv: Dict[int, List[Any]], key: int) -> Callable[[Any], None]:
    """A weakref callback that drops ``kv[key]`` once its buffer is gone (not a newer entry)."""
    def forget(ref: Any) -> None:
        if key in kv and kv[key][0] is ref:
            del kv[key]
    return forget


class _LayerProbe:
    """Per-connection statistics of one canvas layer (precomputed once from its plan)."""

    def __init__(self, name: str, layer: nn.Module, max_queries: int) -> None:
        plan = layer.plan
        self.name, self.layer = name, layer
        conns = plan.topology.connections
        n = int(plan.n)
        qw = {f: np.asarray(plan.query_weight[f], dtype=np.float64) for f in plan.groups}
        den = np.zeros(n)
        for w in qw.values():
            den += w
        updated = np.flatnonzero(den > 0)
        if len(updated) > max_queries:
            updated = updated[np.linspace(0, len(updated) - 1, max_queries).round().astype(np.int64)]
        self.sample = updated  # packed query positions
        self.T = int(plan.layout.T)
        V = frame_size(plan)
        self.sample_frame = plan.perm[updated] // V if V else np.zeros(len(updated), np.int64)
        safe = np.where(den > 0, den, 1.0)
        self.c_fn = {f: (qw[f] / safe)[updated] for f in plan.groups}  # (S,) mixing share per type
        self.labels: Dict[int, str] = {}
        self.fn_of: Dict[int, str] = {}
        self.conn_share: Dict[int, np.ndarray] = {}  # non-softmax: w_c(p) / den(p) at the sample
        weights = [float(c.weight) for c in conns]
        soft = set(getattr(layer, "softmax_types", ()))
        for f, g in plan.groups.items():
            for ci in g.connections:
                c = conns[ci]
                self.labels[ci] = f"{name}/#{ci} {c.src}->{c.dst} [{f}]"
                self.fn_of[ci] = f
                if f not in soft:
                    only = [w if i == ci else 0.0 for i, w in enumerate(weights)]
                    self.conn_share[ci] = (plan_query_weights(plan, only)[f] / safe)[updated]
        # per type: the rows of the sample each plan rectangle covers (sample is sorted)
        self._rect_rows = {f: (np.searchsorted(updated, np.asarray(plan.groups[f].q0)),
                               np.searchsorted(updated, np.asarray(plan.groups[f].q1)))
                           for f in plan.groups}
        # rollout steps: id(input buffer) -> [weakref to it, last frame, keys, values] (float32)
        self._kv: Dict[int, List[Any]] = {}
        self.stats: Dict[str, _Mean] = {}
        self.module_norm: Dict[str, _Mean] = {}
        self.forwards = 0  # measured forwards of this layer (see applies)
        # whether the fn modules now run inside a measured update: set by the layer's update
        # observer, cleared around every call of the layer and of the recorded model, so that the
        # module outputs of a restricted call, an empty batch or a rollout step are not averaged in
        self.live = False

    def applies(self, x: Any, active: Any) -> bool:
        """Whether a call ``layer(x, active)`` is a whole-canvas forward the probe can measure: not
        restricted to some regions, ``x`` of the layer's shape (anything else is left to the
        layer, which refuses bad input itself, or is a rollout step of one frame), and at least
        one sample in the batch (an empty batch has no mass to average: it would make every
        running mean NaN for the rest of the recording)."""
        layer = self.layer
        return (active is None and isinstance(x, torch.Tensor) and x.dim() == 3
                and x.shape[0] > 0 and x.shape[1] == int(layer.plan.n) and x.shape[2] == layer.d_model
                and x.is_floating_point())

    def _add(self, key: str, total: float, count: int) -> None:
        m = self.stats.setdefault(key, _Mean())
        m.total += total
        m.count += count

    def _rows(self, lo: int, hi: int) -> np.ndarray:
        """Indices into ``self.sample`` of the sampled queries on frames ``lo .. hi - 1``."""
        return np.flatnonzero((self.sample_frame >= lo) & (self.sample_frame < hi))

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        """``(3, B, H, n, d)`` float32 queries, keys and values of ``x`` ``(B, n, D)``."""
        layer = self.layer
        B, n, _ = x.shape
        return layer.qkv(x).reshape(B, n, 3, layer.n_heads, layer.head_dim).permute(2, 0, 3, 1, 4).float()

    def _measures_softmax(self, x: torch.Tensor, rows_all: np.ndarray) -> bool:
        return bool(self.layer.executor.soft_fns) and self.layer.qkv is not None and len(rows_all) > 0 \
            and x.shape[0] > 0

    @torch.no_grad()
    def softmax_forward(self, x: torch.Tensor, lo: int = 0, hi: Optional[int] = None) -> None:
        """Add the softmax-family statistics of the sampled queries of canvas frames ``lo .. hi - 1``
        (default: all), ``x`` ``(B, hi V, D)`` the layer's input on frames ``0 .. hi - 1`` (keys
        of later frames are never linked to those queries: a rollout's topology is causal)."""
        rows_all = self._rows(lo, self.T if hi is None else hi)
        if self._measures_softmax(x, rows_all):
            qkv = self._qkv(x)
            self._measure(qkv[0], 0, qkv[1], qkv[2], rows_all)

    @torch.no_grad()
    def step_forward(self, h: torch.Tensor, t: int) -> None:
        """:meth:`softmax_forward` of a rollout step of frame ``t`` (``h`` ``(B, (t + 1) V, D)``, a
        view of the step's input buffer; every step of the buffer is seen, in order): ``qkv`` runs
        only on the frames since this buffer's last measured step, whose keys and values are kept."""
        V = frame_size(self.layer.plan)
        base = h._base if h._base is not None else h
        entry = self._kv.get(id(base))
        if entry is not None and (entry[0]() is not base or entry[1] >= t  # a new episode
                                  or (entry[2].is_inference() and not torch.is_inference_mode_enabled())):
            del self._kv[id(base)]
            entry = None
        rows_all = self._rows(t, t + 1)
        if not self._measures_softmax(h, rows_all):
            return
        s0 = 0 if entry is None else entry[1] + 1  # frames s0 .. t have no keys yet
        qkv = self._qkv(h[:, s0 * V:])
        if entry is None:
            k = qkv.new_empty(qkv.shape[1], qkv.shape[2], self.T * V, qkv.shape[4])
            entry = self._kv[id(base)] = [weakref.ref(base, _forget(self._kv, id(base))), t, k, torch.empty_like(k)]
        k, v = entry[2], entry[3]
        k[:, :, s0 * V:(t + 1) * V], v[:, :, s0 * V:(t + 1) * V] = qkv[1], qkv[2]
        entry[1] = t
        self._measure(qkv[0][:, :, (t - s0) * V:], t * V, k[:, :, :(t + 1) * V], v[:, :, :(t + 1) * V], rows_all)

    def _measure(self, q: torch.Tensor, q0: int, k: torch.Tensor, v: torch.Tensor, rows_all: np.ndarray) -> None:
        """The statistics of the sampled queries ``rows_all``: ``q`` ``(B, H, ., d)`` the queries of
        canonical positions ``q0 ..``, ``k`` / ``v`` ``(B, H, n, d)`` those of positions ``0 .. n - 1``."""
        layer, plan = self.layer, self.layer.plan
        device = q.device
        B, H, n, d = k.shape
        cols = np.flatnonzero(plan.perm < n)  # packed keys on the frames k holds
        q = q.index_select(2, torch.as_tensor(plan.perm[self.sample[rows_all]] - q0, device=device))
        scale = layer.beta / math.sqrt(d)
        S = len(rows_all)
        for f in layer.executor.soft_fns:
            weight, owner, keys = self._pair_owner(f, rows_all, cols)
            conns = np.unique(owner[owner >= 0])  # the connections these pairs come from
            if not len(conns):
                continue
            kf, vf = k, v
            if len(keys) < n:  # keys no sampled query links get probability 0: leave them out
                at_keys = torch.as_tensor(keys, device=device)
                kf, vf = k.index_select(2, at_keys), v.index_select(2, at_keys)
            cf = self.c_fn[f][rows_all]
            chunk = max(1, _CHUNK_ELEMENTS // max(1, B * H * len(keys) * len(conns)))
            sums = torch.zeros(len(conns), 3, dtype=torch.float64, device=device)  # mass, norm, queries
            for c0 in range(0, S, chunk):
                rows = slice(c0, min(S, c0 + chunk))
                w = weight[rows]
                linked = (w > 0).any(-1)
                if not linked.any():
                    continue
                bias = np.where(w > 0, np.log(np.where(w > 0, w, 1.0)), -np.inf).astype(np.float32)
                logits = torch.einsum("bhsd,bhnd->bhsn", q[:, :, rows], kf) * scale + torch.as_tensor(bias, device=device)
                probs = torch.softmax(logits.masked_fill(torch.as_tensor(~linked[:, None], device=device), 0.0), dim=-1)
                mine = owner[rows][:, None] == conns[:, None]  # (s, C, K): the keys of each connection
                pm = probs[:, :, :, None] * torch.as_tensor(mine.astype(np.float32), device=device)  # (B, H, s, C, K)
                out = (pm.flatten(2, 3) @ vf).unflatten(2, pm.shape[2:4])  # (B, H, s, C, d), no copy of v
                stat = torch.stack([pm.sum(-1).mean(1), out.permute(0, 2, 3, 1, 4).flatten(3).norm(dim=-1)], -1)
                # a sample with a NaN / inf at a query is left out of that query's mean: one bad
                # sample would make the running means NaN for the rest of the recording
                ok = stat.isfinite().all(-1, keepdim=True).to(stat.dtype)  # (B, s, C, 1)
                n_ok = ok.sum(0)
                stat = (stat.nan_to_num() * ok).sum(0) / n_ok.clamp_min(1)  # (s, C, 2): mass, norm
                at = (n_ok > 0) & torch.as_tensor(mine.any(-1)[..., None], device=device)  # queries it links
                c = torch.as_tensor(cf[rows, None, None], device=device, dtype=stat.dtype)
                # sums, not chunk means: every query weighs the same however the chunks fall
                sums += torch.cat([c * stat * at, at], -1).sum(0).double()
            for ci, (mass_sum, norm_sum, count) in zip(conns.tolist(), sums.tolist()):
                if count:  # else every sample was non-finite at its queries: nothing measured
                    self._add(f"{self.labels[ci]}/mass_share", mass_sum, int(count))
                    self._add(f"{self.labels[ci]}/out_norm", norm_sum, int(count))

    def _pair_owner(self, f: str, rows_all: np.ndarray, cols: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(weight (S, K), owner (S, K), keys (K,))`` of type ``f`` between the sampled queries
        ``rows_all`` and the packed keys ``cols`` (both sorted): ``keys`` the canonical positions
        of the keys some query links, ``weight`` the largest weight linking a pair and ``owner`` the
        connection it comes from (-1: not linked).  Only the plan's rectangles that touch both are
        visited (in plan order, so ties go as before): a rollout step costs what its frame needs."""
        plan = self.layer.plan
        g = plan.groups[f]
        r_lo, r_hi = self._rect_rows[f]
        k0, k1 = np.asarray(g.k0), np.asarray(g.k1)
        touch = ((np.searchsorted(rows_all, r_hi) > np.searchsorted(rows_all, r_lo))
                 & (np.searchsorted(cols, k1) > np.searchsorted(cols, k0)))
        row_at = np.full(len(self.sample), -1, dtype=np.int64)
        row_at[rows_all] = np.arange(len(rows_all))
        col_at = np.full(int(plan.n), -1, dtype=np.int64)
        col_at[cols] = plan.perm[cols]  # columns in canonical order, as the keys are
        weight = np.zeros((len(rows_all), len(cols)))
        owner = np.full((len(rows_all), len(cols)), -1, dtype=np.int64)
        for r in np.flatnonzero(touch):
            rows, cs = row_at[r_lo[r]:r_hi[r]], col_at[k0[r]:k1[r]]
            block = np.ix_(rows[rows >= 0], cs[cs >= 0])
            better = g.weight[r] > weight[block]
            weight[block] = np.where(better, g.weight[r], weight[block])
            owner[block] = np.where(better, g.conn[r], owner[block])
        keys = np.flatnonzero((weight > 0).any(0))
        if len(keys) == len(cols):
            return weight, owner, keys
        return weight[:, keys], owner[:, keys], keys

    def module_output(self, fn: str, out: Any) -> None:
        if self.live and isinstance(out, torch.Tensor) and out.dim() >= 2 and out.numel():
            norms = out.detach().float().norm(dim=-1)
            finite = norms[norms.isfinite()]  # rows of a sample with NaN / inf are left out
            if finite.numel():
                self.module_norm.setdefault(fn, _Mean()).add(float(finite.mean()))

    def values(self) -> Dict[str, float]:
        out = {k: m.value for k, m in self.stats.items()}
        if not self.forwards:  # nothing measured: no shares from the weights alone either
            return out
        for ci, share in self.conn_share.items():
            at = share > 0
            if not at.any():
                continue
            fn = self.fn_of[ci]
            out[f"{self.labels[ci]}/mass_share"] = float(share[at].mean())
            norm = self.module_norm.get(fn)
            if norm is not None:
                out[f"{self.labels[ci]}/out_norm"] = float(share[at].mean() * norm.value)
        return out


def _in_backward() -> bool:
    """Whether autograd's backward is running: a forward now is the recomputation of activation
    checkpointing (``torch.utils.checkpoint``, looped blocks), already measured in the forward."""
    task = getattr(torch._C, "_current_graph_task_id", None)  # -1 outside backward
    return task is not None and task() != -1


def _refuse_sequence_parallel(modules: Dict[str, nn.Module]) -> None:
    """Refuse a model with sequence-parallel layers (``parallelize_canvas``): each rank holds a
    share of the canvas, its layer never sees the whole canvas the probes measure (they would
    report nothing), and measuring it would take collectives every rank must join."""
    from canvas_core.runtime.sequence_parallel import SequenceParallelCanvasAttention, SequenceParallelError

    names = [n or "<model>" for n, m in modules.items() if isinstance(m, SequenceParallelCanvasAttention)]
    if names:
        raise SequenceParallelError(
            f"record_telemetry: layer(s) {names[:3]} run sequence-parallel (parallelize_canvas): each rank "
            "holds a share of the canvas, and the connection statistics need the whole canvas, so nothing "
            "would be measured. Measure a model that is not parallelized on the whole canvas instead, e.g. "
            "on one rank: save_canvas_checkpoint(model, path, schema) (every rank may call it: the names "
            "are the plain model's), load_canvas_checkpoint(plain_model, path, schema), then "
            "telemetry(plain_model, x_whole)")


class Telemetry:
    """The numbers of the forwards recorded by :func:`record_telemetry` (see the module docstring)."""

    def __init__(self, model: nn.Module, max_queries: int = 256) -> None:
        if not isinstance(model, nn.Module):
            raise CanvasTypeError(f"record_telemetry expects an nn.Module, got {type(model).__name__}")
        if not is_int(max_queries) or max_queries < 1:  # numpy integers too, as the schema takes them
            raise CanvasTypeError(f"record_telemetry: max_queries must be an int >= 1 (queries sampled per "
                                  f"layer), got {max_queries!r}")
        max_queries = int(max_queries)
        self.model = model
        self.max_queries = max_queries
        self.forwards = 0  # calls of the model that were measured (see _model_ends)
        self._open: List[int] = []  # per model call in progress: measured layer forwards at its start
        self._probes: List[_LayerProbe] = []
        self._handles: List[Any] = []

    def _start(self) -> None:
        from canvas_core.runtime.canvas_attention import CanvasAttention
        from canvas_core.runtime.canvas_attention import _key as fn_module_key

        modules = dict(self.model.named_modules())
        _refuse_sequence_parallel(modules)
        wrapped = wrapped_paths(self.model)
        for name, mod in modules.items():
            if not isinstance(mod, CanvasAttention):
                continue
            probe = _LayerProbe(_series_name(name, modules, wrapped) or type(mod).__name__, mod, self.max_queries)
            self._probes.append(probe)
            self._handles.append(mod.observe_updates(self._observer(probe)))  # layer(x) and layer.delta(x)
            self._handles.append(observe_steps(mod, self._step_observer(probe)))  # rollout steps
            self._handles.append(mod.register_forward_pre_hook(self._quiet([probe])))
            self._handles.append(mod.register_forward_hook(self._quiet([probe]), always_call=True))
            for fn in mod.executor.other_fns:
                self._handles.append(mod.fn_modules[fn_module_key(fn)].register_forward_hook(
                    lambda _m, _i, out, p=probe, f=fn: p.module_output(f, out)))
        self._handles.append(self.model.register_forward_pre_hook(self._model_starts))
        self._handles.append(self.model.register_forward_hook(self._model_ends, always_call=True))

    def _measured(self) -> int:
        return sum(p.forwards for p in self._probes)

    def _model_starts(self, _module: nn.Module, _inputs: Any) -> None:
        self._quiet(self._probes)()
        self._open.append(self._measured())

    def _model_ends(self, _module: nn.Module, _inputs: Any, _output: Any) -> None:
        """Count the call as a recorded forward when a canvas layer measured something in it (or
        when the model has no canvas layer: nothing is left out then)."""
        self._quiet(self._probes)()
        before = self._open.pop() if self._open else self._measured()
        if not self._probes or self._measured() > before:
            self.forwards += 1

    @staticmethod
    def _quiet(probes: List[_LayerProbe]):
        """A hook (any arguments) that marks ``probes`` as not measuring."""
        def quiet(*_args: Any) -> None:
            for p in probes:
                p.live = False
        return quiet

    @staticmethod
    def _observer(probe: _LayerProbe):
        def observe(_layer: nn.Module, x: torch.Tensor, active: Any) -> None:
            probe.live = False
            if _in_backward() or not probe.applies(x, active):
                return
            frames = frames_measured()  # a rollout's own forward: only the frames it outputs
            if frames is None:
                probe.live = True  # the fn modules' outputs are this forward's: measure them
                probe.forwards += 1
                probe.softmax_forward(x)
            elif frames[0] < frames[1]:
                probe.forwards += 1
                probe.softmax_forward(x[:, :frames[1] * frame_size(probe.layer.plan)], *frames)
        return observe

    @staticmethod
    def _step_observer(probe: _LayerProbe):
        """A rollout step of frame ``t``: the queries of that frame (the fn modules ran on some rows
        only, so their outputs are not averaged in)."""
        def observe(_layer: nn.Module, h: torch.Tensor, t: int) -> None:
            if not _in_backward() and h.shape[0] > 0 and h.is_floating_point():
                probe.forwards += 1
                probe.step_forward(h, t)
        return observe

    def _stop(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for p in self._probes:
            p._kv.clear()  # the keys and values of rollout steps

    def gate_values(self) -> Dict[str, float]:
        """``gate/<name>``: every parameter of the model whose name contains ``gate``, now."""
        out: Dict[str, float] = {}
        wrapped = wrapped_paths(self.model)
        for name, p in self.model.named_parameters():
            if "gate" not in name.rsplit(".", 1)[-1]:
                continue
            name = plain_name(name, wrapped)
            t = p.detach().float().flatten().cpu()
            if t.numel() <= _MAX_ELEMENTS:
                for i, v in enumerate(t.tolist()):
                    out[f"gate/{name}/{i}" if t.numel() > 1 else f"gate/{name}"] = float(v)
            else:
                out[f"gate/{name}/mean"] = float(t.mean())
                out[f"gate/{name}/absmax"] = float(t.abs().max())
        return out

    def values(self) -> Dict[str, float]:
        """Everything, as ``{name: float}``, ready for any logger."""
        out: Dict[str, float] = {}
        for probe in self._probes:
            out.update(probe.values())
        out.update(self.gate_values())
        return out

    def summary(self, top: int = 8) -> str:
        """A few readable lines: the ``top`` connections carrying the most output, then the gates."""
        if not is_int(top) or top < 0:  # a negative top would drop the last connections instead
            raise CanvasTypeError(f"Telemetry.summary(top={top!r}): top is how many connections to list, an int >= 0")
        top = int(top)
        vals = self.values()
        shares = sorted(((v, k[: -len("/mass_share")]) for k, v in vals.items() if k.endswith("/mass_share")),
                        reverse=True)
        lines = [f"telemetry over {self.forwards} forward(s): share of output by connection (top {top})"]
        lines += [f"  {v:6.1%}  {k}" for v, k in shares[:top]]
        gates = [(k, v) for k, v in vals.items() if k.startswith("gate/")]
        if gates:
            lines.append(f"gates ({len(gates)}): largest |value| "
                         + ", ".join(f"{k[5:]}={v:+.3g}" for k, v in sorted(gates, key=lambda kv: -abs(kv[1]))[:4]))
        return "\n".join(lines)


@contextmanager
def record_telemetry(model: nn.Module, *, max_queries: int = 256) -> Iterator[Telemetry]:
    """Measure every forward of ``model`` inside the block; see the module docstring."""
    tel = Telemetry(model, max_queries)
    tel._start()
    try:
        yield tel
    finally:
        tel._stop()


def telemetry(model: nn.Module, *inputs: Any, max_queries: int = 256, **kwargs: Any) -> Dict[str, float]:
    """Run ``model(*inputs, **kwargs)`` once without gradient and return its telemetry dict."""
    with record_telemetry(model, max_queries=max_queries) as tel, torch.no_grad():
        model(*inputs, **kwargs)
    return tel.values()
