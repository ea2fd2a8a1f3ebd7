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
forward itself.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Tuple

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
_CHUNK_ELEMENTS = 1 << 24  # (B * H * queries * N) per chunk of the softmax probe


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

    @torch.no_grad()
    def softmax_forward(self, x: torch.Tensor, lo: int = 0, hi: Optional[int] = None) -> None:
        """Add the softmax-family statistics of the sampled queries of canvas frames ``lo .. hi - 1``
        (default: all), ``x`` ``(B, hi V, D)`` the layer's input on frames ``0 .. hi - 1`` (keys
        of later frames are never linked to those queries: a rollout's topology is causal)."""
        layer, plan = self.layer, self.layer.plan
        ex = layer.executor
        hi = self.T if hi is None else hi
        rows_all = np.flatnonzero((self.sample_frame >= lo) & (self.sample_frame < hi))
        if not ex.soft_fns or layer.qkv is None or not len(rows_all) or not x.shape[0]:
            return
        B, n, D = x.shape
        H, d = layer.n_heads, layer.head_dim
        cols = np.flatnonzero(plan.perm < n)  # packed keys on the frames x holds
        sample = self.sample[rows_all]
        qkv = layer.qkv(x).reshape(B, n, 3, H, d).permute(2, 0, 3, 1, 4).float()
        perm = torch.as_tensor(plan.perm[cols], device=x.device)
        k, v = qkv[1].index_select(2, perm), qkv[2].index_select(2, perm)  # packed order
        q = qkv[0].index_select(2, torch.as_tensor(plan.perm[sample], device=x.device))
        scale = layer.beta / math.sqrt(d)
        S, N = len(sample), len(cols)
        chunk = max(1, _CHUNK_ELEMENTS // max(1, B * H * N))
        for f in ex.soft_fns:
            weight, owner = self._pair_owner(plan.groups[f], int(plan.n), sample)
            if N < int(plan.n):  # a rollout step: the keys of frames 0 .. hi - 1
                weight, owner = weight[:, cols], owner[:, cols]
            cf = self.c_fn[f][rows_all]
            sums: Dict[int, List[float]] = {}  # connection -> [sum of mass, sum of norm, queries]
            for c0 in range(0, S, chunk):
                rows = slice(c0, min(S, c0 + chunk))
                w = torch.as_tensor(weight[rows], device=x.device)
                linked = (w > 0).any(-1)
                if not bool(linked.any()):
                    continue
                logits = torch.einsum("bhsd,bhnd->bhsn", q[:, :, rows], k) * scale
                logits = logits + torch.where(w > 0, w.log(), torch.full_like(w, -math.inf)).float()
                probs = torch.softmax(logits.masked_fill(~linked[None, None, :, None], 0.0), dim=-1)
                own = torch.as_tensor(owner[rows], device=x.device)
                for ci in np.unique(owner[rows][owner[rows] >= 0]):
                    mine = (own == int(ci)).float()
                    pm = probs * mine
                    mass = pm.sum(-1).mean(1)  # (B, s)
                    norm = torch.einsum("bhsn,bhnd->bshd", pm, v).flatten(2).norm(dim=-1)  # (B, s)
                    # a sample with a NaN / inf at a query is left out of that query's mean: one bad
                    # sample would make the running means NaN for the rest of the recording
                    ok = (mass.isfinite() & norm.isfinite()).to(mass.dtype)
                    n_ok = ok.sum(0)
                    mass = (mass.nan_to_num() * ok).sum(0) / n_ok.clamp_min(1)
                    norm = (norm.nan_to_num() * ok).sum(0) / n_ok.clamp_min(1)
                    at = (mine.sum(-1) > 0) & (n_ok > 0)  # the sampled queries this connection links
                    c = torch.as_tensor(cf[rows], device=x.device, dtype=mass.dtype)
                    acc = sums.setdefault(int(ci), [0.0, 0.0, 0])
                    # sums, not chunk means: every query weighs the same however the chunks fall
                    acc[0] += float((c * mass)[at].sum())
                    acc[1] += float((c * norm)[at].sum())
                    acc[2] += int(at.sum())
            for ci, (mass_sum, norm_sum, count) in sums.items():
                if not count:  # every sample non-finite at its queries: nothing measured
                    continue
                self._add(f"{self.labels[ci]}/mass_share", mass_sum, count)
                self._add(f"{self.labels[ci]}/out_norm", norm_sum, count)

    @staticmethod
    def _pair_owner(g: Any, n: int, sample: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """``(weight (S, N), owner (S, N))`` over the queries ``sample`` in packed coordinates: the
        largest weight linking each pair and the connection it comes from (-1: not linked)."""
        S = len(sample)
        weight = np.zeros((S, n))
        owner = np.full((S, n), -1, dtype=np.int64)
        for r in range(g.n_rects):
            rows = np.flatnonzero((sample >= g.q0[r]) & (sample < g.q1[r]))
            if not len(rows):
                continue
            cols = np.arange(g.k0[r], g.k1[r])
            block = np.ix_(rows, cols)
            better = g.weight[r] > weight[block]
            weight[block] = np.where(better, g.weight[r], weight[block])
            owner[block] = np.where(better, g.conn[r], owner[block])
        return weight, owner

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
                probe.softmax_forward(h, t, t + 1)
        return observe

    def _stop(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

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
