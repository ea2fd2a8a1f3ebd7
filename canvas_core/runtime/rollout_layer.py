"""One canvas layer run one frame at a time (the per-layer part of :mod:`.incremental`).

:class:`LayerRoll` holds, for one ``CanvasAttention`` (and one of its calls per model forward,
when the model applies a layer several times), the layer's inputs of the frames written so far
``(B, N + 1, D)`` and, for softmax-family types, their projected keys and values
``(B, H, N + 1, head_dim)``; row ``N`` stays zero and stands for positions not written yet.

A step on frame ``t`` writes the frame's slot, then computes only the frame's queries:

* softmax family: per type, one attention of the frame's queries ``(B, H, V, d)`` over the keys
  the frame reads (cached projections, ``log w`` biases from the plan), mixed by ``W_f(p)``;
* other types: the calls :class:`~canvas_core.runtime.rollout_plan.FramePlan` lists, under the
  calling contract of :mod:`canvas_core.runtime.type_call`;
* ``sum_f W_f(p) out_f(p) / sum_f W_f(p)`` where the layer updates ``p`` (the layer's own
  ``forward`` / ``delta`` then keep the input, or 0, elsewhere).

Nothing is committed here: a slot beyond the committed frames is ignored until the rollout
advances its frame counter, so a failed step leaves the cache as it was.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parameter import is_lazy

from canvas_core.errors import CanvasTypeError, ShapeError
from canvas_core.runtime.rollout_plan import FramePlan, TypeCall
from canvas_core.runtime.type_call import call_attention_type, run_key_set_buckets
from canvas_core.runtime.type_dtypes import naming_connections, type_connections
from canvas_core.schema._validate import is_int
from canvas_core.schema.limits import check_size

__all__ = ["LayerRoll", "FrameUpdates", "layer_frame_plan", "position_free", "default_tolerance", "step_difference",
           "check_width", "check_tolerance", "input_hint"]

#: query rows per chunk of the softmax attention: bounds the (B, H, rows, K_t) scores
_SCORE_ELEMS = 1 << 24


def position_free(module: Any) -> bool:
    """Whether a type's output row for a query depends only on that query and the keys it reads,
    never on where the query or the keys sit in the call (``Nq``, ``Nk``, row index).

    Such a type is called with the rows of the new frame only; any other one with every query of
    the call the frame belongs to.  A module may declare it with ``position_free_rows = True``;
    the builtin types that compute rows independently of positions are known here."""
    flag = getattr(module, "position_free_rows", None)
    if isinstance(flag, bool):
        return flag
    from canvas_core import attention as A

    if type(module) is A.MixtureAttention:
        return all(position_free(e) for e in module.experts)
    return type(module) in (A.CrossAttention, A.CosineAttention, A.SparseAttention, A.GatedAttention,
                            A.SigmoidAttention, A.PoolingAttention, A.NoneAttention, A.PerceiverAttention,
                            A.LinearAttention)


def _per_key_set(module: Any) -> bool:
    from canvas_core.runtime import type_call

    fn = getattr(type_call, "runs_per_key_set", None)
    if fn is not None:
        return bool(fn(module))
    return type_call.calling_convention(module) != type_call.MASKED


def layer_frame_plan(layer: Any) -> FramePlan:
    """The :class:`FramePlan` of a ``CanvasAttention`` (its executor's types, in its order)."""
    from canvas_core.runtime.canvas_attention import _key

    ex = layer.executor
    other = {}
    for f in ex.other_names:
        module = layer.fn_modules[_key(f)]
        other[f] = (not _per_key_set(module), position_free(module))
    return FramePlan(layer.plan, list(ex.soft_fns), other)


class FrameUpdates:
    """Which positions of a frame a layer updates: ``updated`` ``(V,)`` bool, ``all_updated``."""

    def __init__(self, updated: np.ndarray, device: Any) -> None:
        self.updated = torch.from_numpy(updated.copy()).to(device)
        self.all_updated = bool(updated.all())


class _Index:
    """Torch copies of a frame plan's index arrays, on one device (built once per frame)."""

    def __init__(self, device: Any) -> None:
        self.device = device
        # inference tensors cannot be saved for backward: a step outside inference mode builds anew
        self.inference = torch.is_inference_mode_enabled()
        self._cache: Dict[Any, Any] = {}

    def serves(self, device: Any) -> bool:
        """Whether this cache's tensors can be used by a step on ``device`` now."""
        return self.device == device and (not self.inference or torch.is_inference_mode_enabled())

    def get(self, key: Any, build) -> Any:
        if key not in self._cache:
            # a normal cache may first meet a frame inside inference mode: its entries stay normal
            with torch.inference_mode(self.inference):
                self._cache[key] = build()
        return self._cache[key]


def _long(a: np.ndarray, device: Any, n: int) -> torch.Tensor:
    """Canonical positions -> gather indices (``-1``: the zero row ``n``)."""
    a = np.where(a < 0, n, a)
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)


class LayerRoll:
    """Cache and step of one call of one canvas layer (see the module docstring).

    Args:
        layer: the ``CanvasAttention``.
        frames: its :class:`FramePlan`.
        index: shared torch index cache (one per layer and device).
        batch, dtype, device: of the layer's inputs.
    """

    def __init__(self, layer: Any, frames: FramePlan, index: _Index, batch: int, dtype: Any, device: Any) -> None:
        self.layer, self.frames, self.index = layer, frames, index
        n, D = int(layer.plan.n), int(layer.d_model)
        self.n = n
        self.h = torch.zeros(batch, n + 1, D, dtype=dtype, device=device)
        self.kv = None
        #: set by the rollout when a step observer asks for them: per non-softmax type, the rows of
        #: frame ``t`` its module output in the last step ``(B, R, D)`` (before the mixing weights)
        self.keep_rows = False
        self.type_rows: Dict[str, torch.Tensor] = {}
        # which cached keys hold a NaN / inf in key or value, (B, H, n + 1) bool, and the frames
        # of this episode it covers: filled frame by frame on demand (bad_keys)
        self._bad: Optional[torch.Tensor] = None
        self._marked: set = set()
        if frames.softmax_fns:
            shape = (batch, layer.n_heads, n + 1, layer.head_dim)
            self.kv = (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    def _thaw(self) -> None:
        """Normal copies of buffers filled under ``torch.inference_mode()``, which a step outside it
        cannot write (the frames they hold stay)."""
        self.h = self.h.clone()
        if self.kv is not None:
            self.kv = (self.kv[0].clone(), self.kv[1].clone())

    def _fresh(self) -> None:
        """New zero buffers, for an episode after one run with gradients: writing into the old
        ones would chain the new frames to the old episode's graph, and a second ``backward``
        would fail on it (its saved tensors are freed)."""
        self.h = torch.zeros_like(self.h)
        if self.kv is not None:
            self.kv = (torch.zeros_like(self.kv[0]), torch.zeros_like(self.kv[1]))

    def bad_keys(self, t: int) -> Optional[torch.Tensor]:
        """``(B, H, (t + 1) V)`` bool: the cached keys of frames ``0 .. t`` whose key or value holds
        a NaN / inf (None: the layer caches no keys).  Each frame is examined once per episode (its
        own ``V`` keys), so a step costs its frame, not the prefix; nothing is read back."""
        if self.kv is None:
            return None
        k = self.kv[0]
        if self._bad is None or self._bad.shape != k.shape[:3] or self._bad.device != k.device:
            self._bad, self._marked = torch.zeros(k.shape[:3], dtype=torch.bool, device=k.device), set()
        elif self._bad.is_inference() and not torch.is_inference_mode_enabled():
            self._bad = self._bad.clone()
        V = self.frames.V
        with torch.no_grad():
            for i in range(t + 1):
                if i not in self._marked:
                    k, v = self.kv[0].narrow(2, i * V, V), self.kv[1].narrow(2, i * V, V)
                    if k.dtype == torch.float64:  # measured in float32, where |x| > 3.4e38 is inf
                        k, v = k.float(), v.float()
                    zero = (k * 0).add_(v, alpha=0)
                    self._bad.narrow(2, i * V, V).copy_(zero.sum(-1).isnan())  # 0 * NaN or inf is NaN
                    self._marked.add(i)
        return self._bad.narrow(2, 0, (t + 1) * V)

    @classmethod
    def window_rows(cls, layer: Any, cache: Dict[str, Any], x: torch.Tensor, lo: int, hi: int) -> List[Any]:
        """``[(type, rows (B, R, D))]``: the rows of frames ``lo .. hi - 1`` of each other type's
        module output for the whole canvas ``x`` ``(B, N, D)`` (the layer's input), as steps of those
        frames make them (a causal topology: the same rows as the whole canvas call).  ``cache``
        keeps the frame plan and index tensors between calls.  Telemetry of ``slide="recompute"``."""
        if not layer.executor.other_fns:
            return []
        roll = cls.__new__(cls)
        if "frames" not in cache:
            cache["frames"] = layer_frame_plan(layer)
        if "index" not in cache or not cache["index"].serves(x.device):
            cache["index"] = _Index(x.device)
        roll.layer, roll.frames, roll.index, roll.n = layer, cache["frames"], cache["index"], int(layer.plan.n)
        roll.h = torch.cat([x, x.new_zeros(x.shape[0], 1, x.shape[2])], 1)  # slot n: the padding key
        out = []
        # the modules run again: on the side of the random stream (dropout in training would
        # otherwise draw other masks for the rest of the forward and change the model's outputs)
        with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            for t in range(lo, hi):
                roll.keep_rows, roll.type_rows = True, {}
                roll._others(t, x.shape[0], x.shape[2], x[:, roll.frames.frame_slice(t)])
                out += list(roll.type_rows.items())
        return out

    def fits(self, h: torch.Tensor) -> bool:
        """Whether the buffers hold inputs like ``h`` (batch, dtype, device)."""
        return (h.shape[0] == self.h.shape[0] and h.dtype == self.h.dtype and h.device == self.h.device)

    # ---------------------------------------------------------------------------------------------
    def step(self, h: torch.Tensor, t: int):
        """``h`` ``(B, V, D)``: the layer's input at frame ``t`` -> ``(new values (B, V, D) at the
        positions the layer updates, or None when nothing runs; a :class:`FrameUpdates` saying
        which positions of the frame it updates)``: what ``CanvasAttention._updates`` returns for
        a whole canvas, for one frame."""
        fp, layer = self.frames, self.layer
        sl = fp.frame_slice(t)
        B, V, D = h.shape
        if self.h.is_inference() and not torch.is_inference_mode_enabled():
            self._thaw()
        if t == 0 and (self.h.requires_grad or (self.kv is not None and self.kv[0].requires_grad)):
            self._fresh()  # a new episode must not reach the last one's graph (freed by its backward)
        self.h[:, sl] = h
        self.type_rows = {}
        if t == 0:
            self._marked.clear()
        self._marked.discard(t)  # the slot is rewritten
        acc = None
        if fp.softmax_fns:
            qkv = layer.qkv(h).reshape(B, V, 3, layer.n_heads, layer.head_dim).permute(2, 0, 3, 1, 4)
            self.kv[0][:, :, sl] = qkv[1]
            self.kv[1][:, :, sl] = qkv[2]
            mixed, csum = self._softmax(qkv[0], t)
            if mixed is not None:
                acc = layer.project_out(mixed.transpose(1, 2).reshape(B, V, D), csum)
        other = self._others(t, B, D, h)
        if other is not None:
            acc = other if acc is None else acc + other
        upd = self.index.get(("updated", t), lambda: FrameUpdates(fp.updated[sl], h.device))
        return acc, upd

    def _softmax(self, q: torch.Tensor, t: int):
        fp, layer = self.frames, self.layer
        scale = layer.beta / math.sqrt(layer.head_dim)
        sl = fp.frame_slice(t)
        mixed, csum = None, None
        for f in fp.softmax_fns:
            sf = fp.soft(f, t)
            if sf is None:
                continue
            classes = self.index.get(("classes", f, t, q.dtype), lambda sf=sf: self._class_tensors(sf, q.device, q.dtype))
            if classes is not None:
                o = q.new_zeros(q.shape)
                for qi, keys, bias in classes:
                    qc = q if qi is None else q.index_select(2, qi)
                    oc = F.scaled_dot_product_attention(qc, self.kv[0].index_select(2, keys),
                                                        self.kv[1].index_select(2, keys), attn_mask=bias,
                                                        scale=scale)
                    o = oc if qi is None else o.index_copy(2, qi, oc)
            else:  # many distinct rows: one masked attention over the keys the frame reads
                keys, bias, has = self.index.get(("soft", f, t, q.dtype), lambda sf=sf: self._soft_tensors(sf, q.device, q.dtype))
                k = self.kv[0].index_select(2, keys)
                v = self.kv[1].index_select(2, keys)
                o = _attend(q, k, v, bias, scale) * has.to(q.dtype)[None, None, :, None]
            c = self.index.get(("coef", f, t, q.dtype),
                               lambda f=f: torch.from_numpy(fp.coef[f][sl].copy()).to(device=q.device, dtype=q.dtype))
            o = o * c[None, None, :, None]
            mixed = o if mixed is None else mixed + o
            csum = c if csum is None else csum + c
        return mixed, csum

    def _class_tensors(self, sf, device, dtype):
        classes = sf.classes()
        if classes is None:
            return None
        out = []
        for qi, keys, logw in classes:
            full = len(qi) == self.frames.V
            out.append((None if full else torch.from_numpy(qi).to(device), torch.from_numpy(keys).to(device),
                        None if logw is None else torch.from_numpy(logw).to(device=device, dtype=dtype)[None, :]))
        return out

    @staticmethod
    def _soft_tensors(sf, device, dtype):
        grid = torch.from_numpy(sf.grid)
        logw = torch.where(grid > 0, grid.clamp_min(1e-300).log(), torch.full_like(grid, -math.inf))
        row, col = torch.from_numpy(sf.row), torch.from_numpy(sf.col)
        bias = logw[row][:, col]  # (V, K_t)
        has = torch.from_numpy(sf.has_key)
        bias = torch.where(has[:, None], bias, torch.zeros_like(bias))  # no NaN on rows without keys
        return torch.from_numpy(sf.keys).to(device), bias.to(device=device, dtype=dtype), has.to(device)

    def _others(self, t: int, B: int, D: int, h: torch.Tensor) -> Optional[torch.Tensor]:
        from canvas_core.runtime.canvas_attention import _key

        fp, layer = self.frames, self.layer
        sl = fp.frame_slice(t)
        acc = None
        for f in fp.other:
            calls = fp.calls(f, t)
            if not calls:
                continue
            module = layer.fn_modules[_key(f)]
            out = h.new_zeros(B, fp.V, D)
            try:  # free unless raised: a refusal of the module (its dtype, its device) names the connections
                kept = self._type_rows(module, f, t, calls, h.device)
            except ShapeError as exc:  # the same error, named: its cause (torch's error) and frames kept
                named = naming_connections(exc, f, _connections(layer, fp, f))
                if named is exc:
                    raise
                raise named.with_traceback(exc.__traceback__) from exc.__cause__
            for local, o in kept:
                out = out.index_add(1, local, o)
            if self.keep_rows and kept:
                self.type_rows[f] = torch.cat([o for _, o in kept], dim=1)
            c = self.index.get(("coef", f, t), lambda f=f: torch.from_numpy(fp.coef[f][sl].copy()).to(h.device))
            out = out * c.to(out.dtype)[None, :, None]
            acc = out if acc is None else acc + out
        return acc

    def _type_rows(self, module: Any, f: str, t: int, calls: List[TypeCall], device: Any) -> List[Any]:
        """``[(local (R,) frame positions, rows (B, R, D))]``: ``module`` (type ``f``) run on the
        calls of frame ``t`` that it makes."""
        if self.frames.other[f][0]:  # exact key mask: one call with the mask
            kept = []
            for ci, call in enumerate(calls):
                qi, ki, mask, rows, local = self.index.get(("call", f, t, ci),
                                                           lambda call=call: self._call_tensors(call, device))
                kv = self.h.index_select(1, ki)
                o = call_attention_type(module, self.h.index_select(1, qi), kv, kv, key_mask=mask, name=f)
                kept.append((local, o.index_select(1, rows)))
            return kept
        # per key set: key sets of equal shape stacked along the batch, one call per shape
        buckets = self.index.get(("buckets", f, t), lambda: self._buckets(calls, device))
        parts = run_key_set_buckets(module, self.h, self.h, self.h, [(Q, K) for Q, K, _, _ in buckets], name=f)
        return [(local, o.index_select(1, sel)) for (_, o), (_, _, sel, local) in zip(parts, buckets)]

    def _buckets(self, calls: List[TypeCall], device):
        """Per-key-set calls grouped by shape: ``[(Q (G, nq), K (G, nk), rows (R,) into the flattened
        ``G * nq`` outputs, local (R,) frame positions), ...]``."""
        by: Dict[Any, List[TypeCall]] = {}
        for c in calls:
            by.setdefault((len(c.queries), len(c.keys)), []).append(c)
        out = []
        for (nq, _), group in by.items():
            Q = np.stack([np.where(c.queries < 0, self.n, c.queries) for c in group])
            K = np.stack([c.keys for c in group])
            sel = np.concatenate([g * nq + c.rows for g, c in enumerate(group)])
            local = np.concatenate([c.local for c in group])
            out.append(tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)
                             for a in (Q, K, sel, local)))
        return out

    def _call_tensors(self, call: TypeCall, device):
        mask = None if call.mask is None else self.index.get(("mask", id(call.mask)),
                                                             lambda: torch.from_numpy(call.mask).to(device))
        return (_long(call.queries, device, self.n), _long(call.keys, device, self.n), mask,
                torch.from_numpy(call.rows.astype(np.int64)).to(device),
                torch.from_numpy(call.local.astype(np.int64)).to(device))


def _connections(layer: Any, frames: FramePlan, f: str) -> Any:
    """``(src, dst)`` of type ``f``'s connections: as the layer's runner recorded them at its
    build, else read from the plan (asked only when a refusal is raised)."""
    pairs = getattr(getattr(layer, "executor", None), "type_connections", {}).get(f)
    return pairs if pairs is not None else type_connections(frames.plan, f)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(scale q k^T + bias) v`` for ``q (B, H, V, d)``, keys ``(B, H, K, d)``, ``bias (V, K)``,
    chunked over query rows so the scores stay bounded."""
    B, H, V, _ = q.shape
    K = k.shape[2]
    rows = max(1, _SCORE_ELEMS // max(1, B * H * K))
    if rows >= V:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    parts: List[torch.Tensor] = []
    for s in range(0, V, rows):
        parts.append(F.scaled_dot_product_attention(q[:, :, s:s + rows], k, v, attn_mask=bias[s:s + rows],
                                                    scale=scale))
    return torch.cat(parts, dim=2)


def default_tolerance(dtype: torch.dtype) -> float:
    """``check=True``: ``1e-4``, or 8 units of the output dtype's resolution where that is coarser
    (float16, bfloat16: a step and the full forward round differently)."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return max(1e-4, 8 * eps)


def step_difference(y: torch.Tensor, ref: torch.Tensor) -> Tuple[float, float]:
    """(largest ``|y - ref|``, ``max(1, largest finite |ref|)``); a NaN or inf of the step where
    the full forward has the same value (a non-finite input frame) is no difference, any other
    non-finite value is an infinite one; bool and integer outputs differ by nothing or by inf."""
    if not ref.numel():
        return 0.0, 1.0
    if not isinstance(y, torch.Tensor) or y.shape != ref.shape:
        return float("inf"), 1.0
    if not (ref.is_floating_point() or ref.is_complex()):  # a flag or an index: equal, or wrong
        return (0.0 if torch.equal(y, ref) else float("inf")), 1.0
    fin = torch.isfinite(ref)
    scale = max(1.0, float(ref.abs().masked_fill(~fin, 0).max()))
    same = (y == ref) | (y.isnan() & ref.isnan())  # inf == inf of the same sign
    if not bool((same | (fin & torch.isfinite(y))).all()):
        return float("inf"), scale
    return float((y - ref).masked_fill(~fin, 0).abs().max()), scale


def input_hint(x: torch.Tensor, model: torch.nn.Module) -> str:
    """A sentence naming a frame's dtype / device when they are not the model's parameters'."""
    p = next((p for p in model.parameters() if not is_lazy(p) and p.is_floating_point()), None)
    if p is None or (x.dtype, x.device) == (p.dtype, p.device):
        return ""
    return (f" The frame is {x.dtype} on {x.device}, the model's parameters {p.dtype} on {p.device}: "
            "give the frames the model's dtype and device.")


def check_width(width: Any, layout: Any) -> int:
    """``width=``: the step input's last dimension, a positive int (numpy integers too, as the
    schema takes them; no bool, no float, no string, which ``int()`` would convert or truncate),
    within the width limit (``CANVAS_MAX_WIDTH``) as every other width is: ``SizeLimitError``."""
    if width is None:
        return int(layout.d_model)
    if not is_int(width) or width < 1:
        raise CanvasTypeError(f"incremental(width={width!r}): width is the size D of a step's input "
                              f"(B, V, D), an int >= 1; leave it out to use layout.d_model "
                              f"({layout.d_model})")
    check_size("width", int(width), "incremental width", fix="Give the size D of a step's input (B, V, D), or "
               f"leave width out to use layout.d_model ({layout.d_model})")
    return int(width)


def check_tolerance(check: Any) -> Optional[float]:
    """``check=``: None (off), ``1e-4`` for True, or the relative tolerance given (a real > 0)."""
    if check is False or check is None:
        return None
    if check is True:
        return 1e-4
    # any real number but a bool (numpy scalars too); NaN and inf fail the range test
    if isinstance(check, bool) or not isinstance(check, numbers.Real) \
            or not 0 < float(check) < float("inf"):
        raise CanvasTypeError(f"incremental(check={check!r}): pass True, False, or a relative tolerance > 0")
    return float(check)
