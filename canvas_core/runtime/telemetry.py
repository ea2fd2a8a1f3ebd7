"""Telemetry: what a canvas model does with its topology, as a flat dict of numbers.

Off by default and free when off: nothing is registered on a model until a recording starts.

* :func:`record_telemetry` -- a context manager; every forward inside it is measured::

      with canvas_core.record_telemetry(model) as tel:
          loss = loss_fn(model(x), y)
          loss.backward()
      logger.log(tel.values())          # {"layers.0.attn/#1 action->video [cross_attention]/mass_share": 0.31, ...}

* :func:`telemetry` -- one forward (no gradient) and its numbers in one call.

What is measured (docs/telemetry.md has the details), averaged over the sampled queries of the
recorded forwards: whole-canvas calls with a non-empty batch, and rollout steps at the queries of
their frame (not: a call restricted to some regions, an empty batch, the full forward of
``incremental(check=...)``, a recomputation in backward, a sample not finite at a query):

* ``<layer>/#<i> <src>-><dst> [<fn>]/mass_share`` -- the share of the layer's output at the
  queries connection ``i`` links that comes through it: ``c_f(p) * m_c(p)``, ``c_f(p) = W_f(p) /
  sum_g W_g(p)`` the mixing share of its type and ``m_c(p)`` the softmax mass on its keys (softmax
  family; a pair two connections link counts for the heavier one), or its share ``w_c(p) /
  W_f(p)`` of its type's weight (other types).  At a query, the shares sum to 1.
* ``.../out_norm`` -- the norm of the connection's part of the output: ``c_f(p) * ||sum_{j in c}
  a_pj v_j||`` (softmax family, heads concatenated, before the output projection), or its weight
  share times the mean row norm of its type's module output (a rollout step: its frame's rows).
* ``gate/<parameter name>`` -- every parameter whose name contains ``gate``: each element for up
  to 16 elements (``.../<k>``), else ``/mean`` and ``/absmax``; complex ones with ``/real`` and
  ``/imag`` parts, empty ones named by ``empty_gates()`` (see ``telemetry_gates.py``).

Queries are sampled (``max_queries`` per layer, evenly spaced, and one of every connection they
miss; a connection that links no query reports 0).  A failed rollout step or forward adds
nothing.  A rollout step reads the rollout's cached keys and values and its mask of non-finite
keys, and runs ``qkv`` on its sampled queries only; a frame's index work is done once per
recording within ``_PREP_BYTES`` per layer.  A copy of the model taken during a recording has none
of its hooks."""

from __future__ import annotations

import math
import sys
import weakref
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import nn

from canvas_core.errors import CanvasTypeError, CompileError
from canvas_core.runtime.compiled_names import wrapped_paths
from canvas_core.runtime.finite_guard import non_finite_keys
from canvas_core.runtime.func_transforms import compile_disabled
from canvas_core.runtime.incremental import in_backward, frames_measured, observe_steps
from canvas_core.runtime.input_checks import refuse_unbindable_call
from canvas_core.runtime.layer_observers import keep_out_of_copies
from canvas_core.runtime.plan_runner import plan_query_weights
from canvas_core.runtime.rollout_layer import LayerRoll
from canvas_core.runtime.rollout_context import undo_if_step_fails
from canvas_core.runtime.rollout_plan import frame_size, sampled_links
from canvas_core.runtime.telemetry_queries import sample_queries, series_name, unlinked_connections
from canvas_core.runtime.telemetry_gates import empty_gates, gate_parameters, gate_series
from canvas_core.runtime.telemetry_sums import _Mean, _ProbeSums
from canvas_core.schema._validate import is_int

__all__ = ["Telemetry", "record_telemetry", "telemetry"]

_CHUNK_ELEMENTS = 1 << 20  # (B * H * queries * connections * keys) per chunk of the softmax probe (cache-sized)
_PREP_BYTES = 4 << 20  # per layer: the probe's index tensors kept, (queries * keys) * (4 + connections) bytes


class _Prep(NamedTuple):
    """What the softmax probe needs of one type at some sampled queries and keys (from the plan):
    ``conns`` the connections linking them, ``keys`` the canonical keys some query links (None:
    all), the chunks of :func:`sampled_links` as tensors, and ``size`` their bytes."""
    conns: torch.Tensor
    keys: Optional[torch.Tensor]
    chunks: List[Tuple[Any, ...]]
    size: int


class _LayerProbe(_ProbeSums):
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
        updated = sample_queries(plan, np.flatnonzero(den > 0), max_queries)
        self.sample = updated  # packed query positions
        self.sample_pos = plan.perm[updated]  # and their canonical positions
        self.T = int(plan.layout.T)
        self.V = V = frame_size(plan)
        self.sample_frame = self.sample_pos // V if V else np.zeros(len(updated), np.int64)
        self._frame_rows = [self._rows(t, t + 1) for t in range(self.T)]  # what a rollout step measures
        safe = np.where(den > 0, den, 1.0)
        self.c_fn = {f: (qw[f] / safe)[updated] for f in plan.groups}  # (S,) mixing share per type
        self.labels: Dict[int, str] = {}
        self.unlinked = unlinked_connections(plan)  # reported as 0: no output comes through them
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
        # (type, frames, keys, B * H, device) -> _Prep, kept while small: the same in every episode
        self._preps: Dict[Tuple[Any, ...], Optional[_Prep]] = {}
        self._prep_room = _PREP_BYTES
        self._stats: Dict[str, _Mean] = {}
        # (type, device) -> (connections, 3) float64 sums not yet read back: reading them at every
        # step would wait for the device at every step
        self._pending: Dict[Tuple[Any, ...], torch.Tensor] = {}
        self.module_norm: Dict[str, _Mean] = {}  # per other type: mean row norm of its module's output
        self._norm_pending: Dict[Tuple[Any, ...], torch.Tensor] = {}  # (type, device) -> (sum, rows)
        # measured forwards of this layer (see applies); LayerRoll.window_rows' plan and index tensors
        self.forwards, self.window = 0, {}
        # whether the fn modules run inside a measured update now (set by the update observer,
        # cleared around every call): a restricted call, an empty batch or a rollout step is not
        self.live = False

    def applies(self, x: Any, active: Any) -> bool:
        """Whether ``layer(x, active)`` is a whole-canvas forward to measure: no regions, ``x`` of the
        layer's shape (the layer refuses bad input itself; a rollout step is one frame), and a
        non-empty batch (an empty one has no mass to average: every mean would be NaN from then on)."""
        layer = self.layer
        return (active is None and isinstance(x, torch.Tensor) and x.dim() == 3
                and x.shape[0] > 0 and x.shape[1] == int(layer.plan.n) and x.shape[2] == layer.d_model
                and x.is_floating_point())

    def _rows(self, lo: int, hi: int) -> np.ndarray:
        """Indices into ``self.sample`` of the sampled queries on frames ``lo .. hi - 1``."""
        return np.flatnonzero((self.sample_frame >= lo) & (self.sample_frame < hi))

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        """``(3, B, H, n, d)`` queries, keys and values of ``x`` ``(B, n, D)`` (the layer's dtype)."""
        layer = self.layer
        B, n, _ = x.shape
        return layer.qkv(x).reshape(B, n, 3, layer.n_heads, layer.head_dim).permute(2, 0, 3, 1, 4)

    def _measures_softmax(self, x: torch.Tensor, rows_all: np.ndarray) -> bool:
        return bool(self.layer.executor.soft_fns) and self.layer.qkv is not None and len(rows_all) > 0 \
            and x.shape[0] > 0

    @torch.no_grad()
    def softmax_forward(self, x: torch.Tensor, lo: int = 0, hi: Optional[int] = None) -> None:
        """Add the softmax-family statistics of the sampled queries of canvas frames ``lo .. hi - 1``
        (default: all), ``x`` ``(B, hi V, D)`` the layer's input on frames ``0 .. hi - 1`` (keys
        of later frames are never linked to those queries: a rollout's topology is causal)."""
        hi = self.T if hi is None else hi
        rows_all = self._rows(lo, hi)
        if self._measures_softmax(x, rows_all):
            qkv = self._qkv(x)
            at = torch.as_tensor(self.sample_pos[rows_all], device=x.device)
            k, v = (qkv[1].float(), qkv[2].float()) if qkv[1].dtype == torch.float64 else qkv[1:3]  # as measured
            bad = non_finite_keys(k, v)  # None: all finite, known without a device sync
            self._measure(qkv[0].index_select(2, at).float(), qkv[1], qkv[2], rows_all, (lo, hi), bad)

    @torch.no_grad()
    def step_forward(self, h: torch.Tensor, t: int, kv: Optional[Tuple[Any, Any]], bad: Any = None) -> None:
        """:meth:`softmax_forward` of a rollout step of frame ``t``: ``h`` ``(B, (t + 1) V, D)`` the
        layer's inputs of frames ``0 .. t``, ``kv`` the rollout's cache of their keys and values and
        ``bad`` its mask of non-finite keys (read only): ``qkv`` runs on frame ``t``'s sampled queries."""
        rows_all = self._frame_rows[t]
        if kv is None or not self._measures_softmax(h, rows_all):
            return
        at = torch.as_tensor(self.sample_pos[rows_all], device=h.device)
        q = self._qkv(h.index_select(1, at))[0].float()
        n = (t + 1) * self.V
        self._measure(q, kv[0][:, :, :n], kv[1][:, :, :n], rows_all, (t, t + 1), bad)

    def _measure(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows_all: np.ndarray,
                 frames: Tuple[int, int], bad: Optional[torch.Tensor]) -> None:
        """The statistics of the sampled queries ``rows_all`` (those of canvas frames ``frames``):
        ``q`` ``(B, H, S, d)`` float32 their queries, ``k`` / ``v`` ``(B, H, n, d)`` the keys and
        values of canonical positions ``0 .. n - 1`` (any float dtype), ``bad`` ``(B, H, n)`` bool
        the keys with a NaN / inf (None: none); the sums stay on the device until read."""
        device = q.device
        B, H, n, d = k.shape
        scale = self.layer.beta / math.sqrt(d)
        for f in self.layer.executor.soft_fns:
            prep = self._prep(f, rows_all, frames, n, B * H, device)
            if prep is None:
                continue
            kf, vf = k, v
            if prep.keys is not None:  # keys no sampled query links get probability 0: leave them out
                kf, vf = k.index_select(2, prep.keys), v.index_select(2, prep.keys)
            kf, vf = kf.float(), vf.float()
            badk = badf = None  # a key with a NaN / inf reaches only the queries linking it (weight 0
            if bad is not None:  # times NaN reaches all): its logits and value count as 0 (in place when
                # vf is no view of the cache), and its queries' samples are left out below
                badk = (bad if prep.keys is None else bad.index_select(2, prep.keys)).unsqueeze(-1)
                vf = vf.masked_fill_(badk, 0.0) if vf.data_ptr() != v.data_ptr() else vf.masked_fill(badk, 0.0)
                badf, badk = badk.float(), badk.transpose(2, 3)  # (B, H, 1, K): the logits' columns
            sums = None  # (C, 3): mass, norm, queries
            for rows, unlinked, bias, mine, links, c in prep.chunks:
                qk = torch.einsum("bhsd,bhnd->bhsn", q[:, :, rows], kf)
                if badk is not None:
                    qk.masked_fill_(badk, 0.0)
                logits = qk * scale + bias
                probs = torch.softmax(logits.masked_fill(unlinked, 0.0), dim=-1)
                pm = probs[:, :, :, None] * mine  # (B, H, s, C, K): the keys of each connection
                out = (pm.flatten(2, 3) @ vf).unflatten(2, pm.shape[2:4])  # (B, H, s, C, d), no copy of v
                stat = torch.stack([pm.sum(-1).mean(1), out.permute(0, 2, 3, 1, 4).flatten(3).norm(dim=-1)], -1)
                # a sample with a NaN / inf at a query is left out of that query's mean: one bad
                # sample would make the running means NaN for the rest of the recording
                ok = stat.isfinite().all(-1, keepdim=True)  # (B, s, C, 1)
                if badf is not None:
                    ok &= ((bias > -math.inf).float() @ badf).sum(1)[:, :, None] == 0  # links no bad key
                ok = ok.to(stat.dtype)
                n_ok = ok.sum(0)
                stat = (stat.nan_to_num() * ok).sum(0) / n_ok.clamp_min(1)  # (s, C, 2): mass, norm
                at = (n_ok > 0) & links  # the queries each connection links
                # sums, not chunk means: every query weighs the same however the chunks fall
                part = torch.cat([c * stat * at, at], -1).sum(0).double()
                sums = part if sums is None else sums + part
            if sums is not None:
                key = (f, str(device))
                acc = self._pending.get(key)
                if acc is None:
                    acc = torch.zeros(len(self.layer.plan.topology.connections), 3, dtype=torch.float64, device=device)
                # not in place: one made under torch.inference_mode() is read only outside it
                self._pending[key] = acc.index_add(0, prep.conns, sums)

    def _prep(self, f: str, rows_all: np.ndarray, frames: Tuple[int, int], n: int, bh: int,
              device: Any) -> Optional[_Prep]:
        """The :class:`_Prep` of type ``f`` at the sampled queries ``rows_all`` (of ``frames``) and
        the keys ``0 .. n - 1`` (None: no pair linked), cached while the cache is small."""
        key = (f, frames, n, bh, str(device))
        if key not in self._preps:
            links = sampled_links(self.layer.plan, f, self._rect_rows[f], len(self.sample), rows_all, n,
                                  self.c_fn[f][rows_all], max(1, _CHUNK_ELEMENTS // max(1, bh)))
            prep = None if links is None else _Prep(
                torch.as_tensor(links[0], device=device), None if links[1] is None else torch.as_tensor(links[1], device=device),
                [(c[0],) + tuple(torch.as_tensor(a, device=device) for a in c[1:]) for c in links[2]], links[3])
            if prep is not None and prep.size > self._prep_room:
                return prep
            self._prep_room -= 0 if prep is None else prep.size
            self._preps[key] = prep
        return self._preps[key]


_DISABLED_REASON = "canvas telemetry measures on the host, outside the compiled graph"
# per observed layer: the probes of the recordings open now, and the handles of its two observers
# (one each however many recordings are open, the same functions in every recording: code
# compiled with them is guarded on their identity and serves every later recording)
_LIVE: "weakref.WeakKeyDictionary[nn.Module, Tuple[List[_LayerProbe], List[Any]]]" = weakref.WeakKeyDictionary()


@compile_disabled(_DISABLED_REASON)
def _telemetry_update_observer(layer: nn.Module, x: torch.Tensor, active: Any) -> None:
    """A whole-canvas update of ``layer`` (``observe_updates``); run eagerly, also in compiled code
    (a graph break), as its index work and counters live on the host."""
    for probe in _LIVE.get(layer, ((), ()))[0]:
        probe.live = False
        if in_backward() or not probe.applies(x, active):
            continue
        undo_if_step_fails(probe, probe.checkpoint())  # inside a rollout step that then fails
        frames = frames_measured()  # a rollout's own forward: only the frames it outputs
        if frames is None:
            probe.live = True  # the fn modules' outputs are this forward's: measure them
            probe.forwards += 1
            probe.softmax_forward(x)
        elif frames[0] < frames[1]:  # slide="recompute": the window's last frame
            probe.forwards += 1
            probe.softmax_forward(x[:, :frames[1] * probe.V], *frames)
            probe.add_rows(LayerRoll.window_rows(probe.layer, probe.window, x, *frames))


@compile_disabled(_DISABLED_REASON)
def _telemetry_step_observer(layer: nn.Module, h: torch.Tensor, t: int, kv: Any, rows: Dict[str, Any],
                             bad: Any) -> None:
    """A rollout step of frame ``t``: the queries of that frame, and the rows of that frame of
    each other type's module output (``rows``; the rest of its calls is not the frame's)."""
    if in_backward() or h.shape[0] == 0 or not h.is_floating_point():
        return
    for probe in _LIVE.get(layer, ((), ()))[0]:
        undo_if_step_fails(probe, probe.checkpoint())  # a step that fails later measured nothing
        probe.forwards += 1
        probe.step_forward(h, t, kv, bad)  # bad: (B, H, (t + 1) V) keys with a NaN / inf
        probe.add_rows(rows.items())


def _attach(probe: _LayerProbe) -> None:
    """Let the observers of ``probe.layer`` measure ``probe`` (adding them to a layer not observed yet)."""
    layer = probe.layer
    if layer not in _LIVE:
        _LIVE[layer] = ([], [layer.observe_updates(_telemetry_update_observer),
                             observe_steps(layer, _telemetry_step_observer, cache=True, rows=True, finite=True)])
    _LIVE[layer][0].append(probe)


def _detach(probe: _LayerProbe) -> None:
    """Stop measuring ``probe``; the layer's observers go with its last probe."""
    probes, handles = _LIVE.get(probe.layer, ([], []))
    if any(p is probe for p in probes):
        probes[:] = [p for p in probes if p is not probe]
    if not probes and probe.layer in _LIVE:
        for h in handles:
            h.remove()
        del _LIVE[probe.layer]


def _refuse_sequence_parallel(modules: Dict[str, nn.Module]) -> None:
    """Refuse a model with sequence-parallel layers (``parallelize_canvas``): each rank holds a
    share of the canvas, its layer never sees the whole canvas the probes measure (they would
    report nothing), and measuring it would take collectives every rank must join."""
    from canvas_core.runtime.sequence_parallel import SequenceParallelError, listed, parallel_layer_names

    names = parallel_layer_names(modules.items())
    if names:
        raise SequenceParallelError(
            f"record_telemetry: layer(s) {listed(names)} run "
            "sequence-parallel (parallelize_canvas): each rank "
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
        # per model call in progress: measured layer forwards at its start, the exception being
        # handled then (a call inside an `except` block), and what puts the probes back as they were
        self._open: List[Tuple[int, Any, List[Any]]] = []
        self._probes: List[_LayerProbe] = []
        self._handles: List[Any] = []

    def _refuse_copy(self, *_args: Any) -> Any:
        raise CanvasTypeError(
            "a Telemetry cannot be pickled or copied: it holds the model it records (and, while recording, "
            "hooks on its canvas layers). Keep its numbers instead: telemetry.values() (a dict of floats), "
            "or telemetry.summary() (text)")

    __copy__ = __deepcopy__ = __reduce_ex__ = __reduce__ = __getstate__ = _refuse_copy

    def _start(self) -> None:
        from canvas_core.runtime.canvas_attention import CanvasAttention
        from canvas_core.runtime.canvas_attention import _key as fn_module_key

        modules = dict(self.model.named_modules())
        _refuse_sequence_parallel(modules)
        wrapped = wrapped_paths(self.model)
        for name, mod in modules.items():
            if not isinstance(mod, CanvasAttention):
                continue
            probe = _LayerProbe(series_name(name, modules, wrapped) or type(mod).__name__, mod, self.max_queries)
            self._probes.append(probe)
            _attach(probe)  # layer(x), layer.delta(x) and rollout steps
            self._hook(mod, mod.register_forward_pre_hook(self._quiet([probe])))
            self._hook(mod, mod.register_forward_hook(self._quiet([probe]), always_call=True))
            for fn in mod.executor.other_fns:
                sub = mod.fn_modules[fn_module_key(fn)]
                self._hook(sub, sub.register_forward_hook(lambda _m, _i, out, p=probe, f=fn: p.module_output(f, out)))
        self._hook(self.model, self.model.register_forward_pre_hook(self._model_starts))
        self._hook(self.model, self.model.register_forward_hook(self._model_ends, always_call=True))

    def _hook(self, module: nn.Module, handle: Any) -> None:
        """Keep ``handle`` for :meth:`_stop`, its hook out of copies and pickles of ``module`` (a copy
        taken during the recording is a plain module, and the hooks are closures pickle refuses)."""
        self._handles += [handle, keep_out_of_copies(module, hooks=(handle.id,))]

    def _measured(self) -> int:
        return sum(p.forwards for p in self._probes)

    def _model_starts(self, _module: nn.Module, _inputs: Any) -> None:
        self._quiet(self._probes)()
        self._open.append((self._measured(), sys.exc_info()[1], [p.checkpoint() for p in self._probes]))

    def _model_ends(self, _module: nn.Module, _inputs: Any, _output: Any) -> None:
        """Count the call as a recorded forward when a canvas layer measured something in it (or
        when the model has no canvas layer: nothing is left out then); a call that raises (this
        hook runs then too, inside torch's ``except``) measured nothing."""
        self._quiet(self._probes)()
        before, handling, restores = self._open.pop() if self._open else (self._measured(), None, [])
        if sys.exc_info()[1] not in (None, handling):
            for restore in restores:
                restore()
            return
        if not self._probes or self._measured() > before:
            undo_if_step_fails(self, lambda n=self.forwards: setattr(self, "forwards", n))  # see step_attempt
            self.forwards += 1

    @staticmethod
    def _quiet(probes: List[_LayerProbe]):
        """A hook (any arguments) that marks ``probes`` as not measuring."""
        def quiet(*_args: Any) -> None:
            for p in probes:
                p.live = False
        return quiet

    def _stop(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for p in self._probes:
            _detach(p)
        for p in self._probes:
            p.flush()  # read the sums back, once per recording
            p._preps, p._prep_room = {}, _PREP_BYTES

    def gate_values(self) -> Dict[str, float]:
        """``gate/<name>``: every parameter of the model whose name contains ``gate``, now (complex
        ones as ``/real`` and ``/imag``; empty ones give none: :meth:`empty_gates`)."""
        out: Dict[str, float] = {}
        for name, p in gate_parameters(self.model):
            out.update(gate_series(name, p))
        return out

    def empty_gates(self) -> List[str]:
        """The gate parameters with no elements, which :meth:`gate_values` cannot report."""
        return empty_gates(self.model)

    def values(self) -> Dict[str, float]:
        """Everything, as ``{name: float}``, ready for any logger."""
        out: Dict[str, float] = {k: v for probe in self._probes for k, v in probe.values().items()}
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
        unlinked = [p.labels[ci] for p in self._probes for ci in p.unlinked] if self.forwards else []
        if unlinked:
            lines.append(f"linking no query (reported as 0): {', '.join(unlinked)}")
        gates = [(k, v) for k, v in vals.items() if k.startswith("gate/")]
        if gates:
            lines.append(f"gates ({len(gates)}): largest |value| "
                         + ", ".join(f"{k[5:]}={v:+.3g}" for k, v in sorted(gates, key=lambda kv: -abs(kv[1]))[:4]))
        empty = self.empty_gates()
        if empty:
            lines.append(f"gates with no elements (no values to report): {', '.join(empty)}")
        return "\n".join(lines)


@contextmanager
def record_telemetry(model: nn.Module, *, max_queries: int = 256) -> Iterator[Telemetry]:
    """Measure every forward of ``model`` inside the block; see the module docstring."""
    tel = Telemetry(model, max_queries)
    try:
        tel._start()  # (inside: what a failed start attached is taken back)
        yield tel
    except torch._dynamo.exc.Unsupported as exc:
        if _DISABLED_REASON not in str(exc) and "_telemetry_" not in str(exc):
            raise
        raise CompileError(
            "record_telemetry: a model compiled with torch.compile(..., fullgraph=True) ran while the "
            "recording observed its canvas layers; the measurement runs on the host (numpy index work, "
            "Python counters) outside the compiled graph, which fullgraph=True refuses. Compile without "
            "fullgraph=True while recording, or record the uncompiled model (telemetry(model, x) with "
            "model the module you gave torch.compile)") from exc
    finally:
        tel._stop()


def telemetry(model: nn.Module, *inputs: Any, max_queries: int = 256, **kwargs: Any) -> Dict[str, float]:
    """Run ``model(*inputs, **kwargs)`` once without gradient and return its telemetry dict."""
    try:
        with record_telemetry(model, max_queries=max_queries) as tel, torch.no_grad():
            model(*inputs, **kwargs)
    except TypeError as exc:  # (the recording's own hooks are removed by now)
        isinstance(model, nn.Module) and refuse_unbindable_call(model, inputs, kwargs, exc, "telemetry")
        raise
    return tel.values()
