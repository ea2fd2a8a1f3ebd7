"""What the ranks of a sequence-parallel group must agree on, checked before their exchanges.

The all-to-all of a :class:`~canvas_core.runtime.sequence_parallel.SequenceParallelCanvasAttention`
sends and receives byte counts computed by each rank from its own layer and input.  Ranks that
disagree (other heads, another batch size or dtype, other active regions) either stop inside
gloo / NCCL with a size mismatch (a crashed process) or silently compute something else (another
``beta``).  So:

* at construction, :func:`agree_on_layers` compares the layer settings of every rank (one
  ``all_gather_object``): links, heads, width, attention types, softmax types, ``beta``,
  ``returns``, the cut;
* at every forward, :func:`agree_on_call` compares what the call itself brings: batch size, dtype,
  the autocast state (``torch.autocast`` on the input's device type: the projections then send
  tensors of the autocast dtype, whatever the input's dtype), ``active_regions``, the current
  ``beta`` (a schedule may change it between forwards), whether autograd records the call (its
  backward is an exchange too, which every rank must join), and whether the input passed this
  rank's own checks.  It is one ``all_gather`` of 8 int64 per rank
  (eager; under ``torch.compile`` a graph break, as the exchanges themselves).  The layer's
  ``check_inputs=False`` skips it for a training loop known to feed every rank alike;
* at every :func:`~canvas_core.runtime.sequence_parallel.shard_canvas` /
  :func:`~canvas_core.runtime.sequence_parallel.unshard_canvas`, :func:`agree_on_canvas` compares
  the sharding (N and a fingerprint of the cut), dtype, device type, dims, batch size, sequence
  length (of the whole canvas given to ``shard_canvas``) and trailing shape, whether autograd
  records an ``unshard_canvas`` (its backward is an exchange), and whether the input passed this
  rank's own checks: one ``all_gather`` of 14 int64 per rank, skipped by their
  ``check_inputs=False``.

Each raises the same :class:`SequenceParallelError` on every rank, naming what differs, before
any exchange.
"""

from __future__ import annotations

import hashlib
import struct
import weakref
import zlib
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from canvas_core.attention._base import autocast_on
from canvas_core.runtime.sharding import CanvasSharding, SequenceParallelError

__all__ = ["layer_settings", "agree_on_layers", "agree_on_call", "agree_on_canvas"]


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.tobytes() if isinstance(part, np.ndarray) else repr(part).encode())
    return h.hexdigest()[:16]


def layer_settings(attn: nn.Module, sharding: Any) -> Dict[str, str]:
    """What every rank of a group must agree on, each as a short string (digests for the plan's
    links and the cut): the all-to-all exchanges heads and shares by these numbers alone, and
    the softmax types, ``beta`` and ``returns`` decide what each rank computes with them."""
    plan = attn.plan
    links = [(fn, g.q0, g.q1, g.k0, g.k1, g.weight) for fn, g in sorted(plan.groups.items())]
    cut = (_digest(sharding.size, sharding.bounds, sharding.perm) if isinstance(sharding, CanvasSharding)
           else type(sharding).__name__)
    return {
        "the canvas's links (layout and topology)": _digest(plan.n, plan.perm, *[x for row in links for x in row]),
        "n_heads": str(attn.n_heads), "d_model": str(attn.d_model),
        "attention types": ", ".join(sorted(plan.groups)),
        "softmax_types": ", ".join(sorted(getattr(attn, "softmax_types", ()))),
        "beta": repr(float(getattr(attn, "beta", 1.0))),
        "returns": str(getattr(attn, "returns", "state")),
        "the sharding": cut,
    }


def agree_on_layers(what: str, group: Any, size: int, rank: int, mine: Dict[str, str]) -> None:
    """Raise :class:`SequenceParallelError`, on every rank alike, when the ranks of ``group`` were
    given layers that differ in ``mine``'s settings: run as they are, ranks with other heads or
    layouts exchange tensors of other sizes and stop inside the collective (or compute garbage).
    One ``all_gather_object`` (on NCCL it uses ``torch.cuda.current_device()``)."""
    if size <= 1:
        return
    import torch.distributed as dist

    every: List[Any] = [None] * size
    dist.all_gather_object(every, mine, group=group)
    for key in mine:
        values = [s.get(key) for s in every]
        if len(set(values)) > 1:
            odd = [r for r, v in enumerate(values) if v != values[0]]
            raise SequenceParallelError(
                f"{what}: the ranks of the sequence-parallel group were given different layers: {key} differs "
                f"between rank 0 ({values[0]}) and rank(s) {odd} ({values[odd[0]]}); build the same layer on every "
                "rank (same schema and settings, e.g. from one config) before wrapping it")


# --- per call ----------------------------------------------------------------------------------
_DTYPES = {zlib.crc32(str(d).encode()): str(d).replace("torch.", "") for d in (
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128,
    torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)}
_FIELDS = ("input checks", "batch size", "dtype", "autocast", "active_regions", "beta", "returns", "autograd")
_AUTOGRAD = {1: "autograd recording (its backward exchanges with the other ranks)", 0: "no autograd"}
_AUTOGRAD_HINT = ("Record every rank's call alike: the backward of this call is an exchange that every rank "
                  "of the group must join, so run it under torch.no_grad() / inference_mode on every rank or on "
                  "none, and make the shares require grad (or not) alike")
_DTYPE_NAMES = sorted(_DTYPES.values())
# every text _autocast_text can give, by its code (a code is all that crosses between the ranks)
_AUTOCAST_TEXTS = {zlib.crc32(t.encode("utf-8")): t for d in _DTYPE_NAMES
                   for t in (f"autocast to {d}", f"no autocast (tensors exchanged as {d})")}


def _code(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _beta_bits(beta: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(beta)))[0]


def _bits_beta(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<q", int(bits)))[0]


def _autocast_text(x: torch.Tensor) -> str:
    """What ``torch.autocast`` does to this call on ``x``'s device type: under autocast the QKV
    projection (and what follows it) yields the autocast dtype, and the all-to-all exchanges
    tensors of that dtype, even though ``x`` itself keeps its own."""
    kind = x.device.type
    on, dtype = autocast_on(kind), x.dtype
    if on:
        try:
            dtype = torch.get_autocast_dtype(kind)
        except (RuntimeError, AttributeError):  # a device type autocast does not know
            on = False
    name = str(dtype).replace("torch.", "")
    return f"autocast to {name}" if on else f"no autocast (tensors exchanged as {name})"


def _call_signature(x: Any, active: Optional[List[str]], attn: nn.Module, ok: bool) -> List[int]:
    is_tensor = isinstance(x, torch.Tensor)
    return [1 if ok else 0,
            int(x.shape[0]) if is_tensor and x.dim() > 0 else -1,
            _code(str(x.dtype)) if is_tensor else -1,
            _code(_autocast_text(x)) if is_tensor else -1,
            -1 if active is None else _code("\x00".join(sorted(active))),
            _beta_bits(getattr(attn, "beta", 1.0)),
            _code(str(getattr(attn, "returns", "state"))),
            _recorded(x, attn)]


def _recorded(x: Any, module: Optional[nn.Module] = None) -> int:
    """1 when autograd records a call on ``x`` (grad mode on, and ``x`` or a parameter of
    ``module`` requires grad): its backward then runs the exchanges in reverse, on every rank."""
    if not torch.is_grad_enabled():
        return 0
    if isinstance(x, torch.Tensor) and x.requires_grad:
        return 1
    return int(module is not None and any(p.requires_grad for p in module.parameters()))


def _describe(field: str, value: int, active: Optional[List[str]], mine: bool) -> str:
    if field == "dtype":
        return _DTYPES.get(value, "another dtype")
    if field == "autocast":
        return _AUTOCAST_TEXTS.get(value, "another autocast state")
    if field == "beta":
        return repr(_bits_beta(value))
    if field == "active_regions":
        if value == -1:
            return "None (every region)"
        return repr(sorted(active)) if mine and active is not None else "another set"
    if field == "returns":
        return {_code("state"): "'state'", _code("delta"): "'delta'"}.get(value, "?")
    if field == "autograd":
        return _AUTOGRAD.get(value, "?")
    return str(value)


@torch.compiler.disable  # process groups are opaque to torch.compile: a graph break, as the exchanges
def agree_on_call(layer: nn.Module, x: Any, active: Optional[List[str]], failure: Optional[BaseException]) -> None:
    """Compare this forward's batch size, dtype, autocast state, ``active_regions``, ``beta`` and
    ``returns`` across the ranks of ``layer``'s group, and whether every rank's input passed its own checks
    (``failure``: this rank's exception, or None), and whether autograd records the call (its
    backward exchanges too); raise on every rank before any exchange when they differ.  One
    ``all_gather`` of a few int64 on the device of ``layer``'s parameters."""
    import torch.distributed as dist

    if layer.size <= 1:
        if failure is not None:
            raise failure
        return
    attn = layer.attn
    ref = next(attn.parameters(), None)
    device = ref.device if ref is not None else (x.device if isinstance(x, torch.Tensor) else "cpu")
    mine = torch.tensor(_call_signature(x, active, attn, failure is None), dtype=torch.int64, device=device)
    every = [torch.empty_like(mine) for _ in range(layer.size)]
    dist.all_gather(every, mine, group=layer.group)
    rows = [t.tolist() for t in every]
    if failure is not None:
        raise failure
    failed = [r for r, row in enumerate(rows) if row[0] == 0]
    where = f"SequenceParallelCanvasAttention on rank {layer.rank}"
    if failed:
        raise SequenceParallelError(
            f"{where}: rank(s) {failed} refused their input to this layer (their own error says why); every rank "
            "stops here, before the exchange, so that none waits for the others. Fix there what it names")
    for i, field in enumerate(_FIELDS[1:], start=1):
        values = [row[i] for row in rows]
        if len(set(values)) > 1:
            odd = [r for r, v in enumerate(values) if v != values[0]]
            raise SequenceParallelError(
                f"{where}: the ranks of the sequence-parallel group called the layer with different {field}: "
                f"rank 0 {_describe(field, values[0], active, layer.rank == 0)}, rank {odd[0]} "
                f"{_describe(field, values[odd[0]], active, layer.rank == odd[0])}"
                + (f" (ranks {odd})" if len(odd) > 1 else "")
                + "; every rank holds a share of the same canvas, so each call needs the same batch size, dtype, "
                "autocast state, active_regions and beta on every rank. "
                + ("Run the forward under the same torch.autocast (device type and dtype) on every rank of the "
                   "group, or under none" if field == "autocast" else _AUTOGRAD_HINT if field == "autograd" else
                   "Feed every rank of the group alike (e.g. the same sampler seed for the sequence-parallel ranks)"))


# --- shard_canvas / unshard_canvas -----------------------------------------------------------
# One row of int64 per rank: [own checks passed, N of its sharding, fingerprint of its sharding,
# dtype, device type, ndim, dim 0, dim 1, the next _TRAIL dims (-1 where absent), a code of any
# dims beyond those (0 when none), whether autograd records the call].
_TRAIL = 4
_CANVAS_FIELDS = (("sharding", 1, 3), ("dtype", 3, 4), ("device type", 4, 5), ("number of dimensions", 5, 6),
                  ("batch size", 6, 7), ("sequence length", 7, 8), ("trailing shape", 8, 9 + _TRAIL),
                  ("autograd", 9 + _TRAIL, 10 + _TRAIL))
_DEVICE_TYPES = {zlib.crc32(t.encode()): t for t in ("cpu", "cuda", "mps", "xpu", "hpu", "meta", "mtia")}
_fingerprints: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()


def _fingerprint(sharding: Any) -> int:
    """A crc of the cut and the packing, kept per sharding object (the packing holds N ints)."""
    code = _fingerprints.get(sharding)
    if code is None:
        perm = np.ascontiguousarray(sharding.perm, dtype=np.int64).tobytes()
        code = _fingerprints[sharding] = zlib.crc32(perm, _code(repr(tuple(sharding.bounds))))
    return code


def _canvas_row(x: Any, sharding: Any, ok: bool) -> List[int]:
    head = [1 if ok else 0] + ([-1, -1] if sharding is None else [int(sharding.n), _fingerprint(sharding)])
    if not isinstance(x, torch.Tensor):
        return head + [-1] * (6 + _TRAIL) + [_recorded(x)]
    shape = [int(s) for s in x.shape]
    trail, beyond = shape[2:2 + _TRAIL], shape[2 + _TRAIL:]
    return head + [_code(str(x.dtype)), _code(x.device.type), len(shape),
                   shape[0] if shape else -1, shape[1] if len(shape) > 1 else -1,
                   *trail, *[-1] * (_TRAIL - len(trail)), _code(repr(beyond)) if beyond else 0, _recorded(x)]


def _shape_text(row: List[int]) -> str:
    if row[5] < 0:
        return "no tensor"
    dims = [d for d in row[6:8 + _TRAIL] if d >= 0][:row[5]]
    return "(" + ", ".join(map(str, dims)) + (", ..." if row[8 + _TRAIL] else "") + ("," if len(dims) == 1 else "") + ")"


def _canvas_value(field: str, row: List[int]) -> str:
    a, b = next((a, b) for name, a, b in _CANVAS_FIELDS if name == field)
    v = row[a:b]
    if field == "sharding":
        return "none (its sharding was refused)" if v[0] < 0 else f"N={v[0]} cut {v[1]:08x}"
    if field == "autograd":
        return _AUTOGRAD[v[0]]
    if row[5] < 0:
        return "no tensor"
    if field == "dtype":
        return _DTYPES.get(v[0], "another dtype")
    if field == "device type":
        return _DEVICE_TYPES.get(v[0], "another device type")
    if field == "trailing shape":
        return "(" + ", ".join(str(d) for d in v[:-1] if d >= 0) + (", ..." if v[-1] else "") + ")"
    return str(v[0]) if v[0] >= 0 else "none"


def _gather_device(group: Any, x: Any) -> torch.device:
    """Where the rows are gathered: the CPU on gloo (and MPI), else ``x``'s device, else the
    current CUDA device on NCCL (``shard_canvas`` may get a CPU tensor on an NCCL group)."""
    import torch.distributed as dist

    try:
        backend = str(dist.get_backend(group)).lower()
    except Exception:  # noqa: BLE001 - an unknown backend: go by the tensor
        backend = ""
    if ("gloo" in backend or "mpi" in backend) and "nccl" not in backend:
        return torch.device("cpu")
    if isinstance(x, torch.Tensor) and x.device.type not in ("cpu", "meta"):
        return x.device
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_CANVAS_HINTS = {
    "sharding": "Use one sharding on every rank (the one parallelize_canvas returned, or CanvasSharding.of(the "
                "same plan or layout, the group's size))",
    "sequence length": "Give shard_canvas the whole canvas (B, N, ...) on every rank of the group",
    "autograd": _AUTOGRAD_HINT,
}


@torch.compiler.disable  # process groups are opaque to torch.compile: a graph break, as the exchanges
def agree_on_canvas(what: str, x: Any, sharding: Any, group: Any, size: int, rank: int,
                    failure: Optional[BaseException], *, whole: bool) -> None:
    """Compare what a ``shard_canvas`` (``whole=True``: ``x`` is the whole canvas) or
    ``unshard_canvas`` (``whole=False``: ``x`` is this rank's share, whose length differs by rank)
    call brings on every rank of ``group``: the sharding, dtype, device type, number of dims, batch
    size, sequence length (whole canvas only), trailing shape and whether autograd records the call
    (``unshard_canvas`` only: its backward is an exchange; ``shard_canvas`` only cuts), and whether
    each rank's own checks passed (``failure``: this rank's exception, or None).  One
    ``all_gather`` of 14 int64 per rank.

    Ranks that differ raise the same :class:`SequenceParallelError` on every rank, naming the
    field and two ranks' values; a rank whose own check failed while the others passed makes every
    rank raise it (that rank's message carries its own reason).  When every rank failed alike,
    each raises its own error."""
    if size <= 1:
        if failure is not None:
            raise failure
        return
    import torch.distributed as dist

    mine = torch.tensor(_canvas_row(x, sharding, failure is None), dtype=torch.int64, device=_gather_device(group, x))
    every = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(every, mine, group=group)
    rows = [t.tolist() for t in every]
    own = f"; on this rank: {failure}" if failure is not None else ""
    for field, a, b in _CANVAS_FIELDS:
        if field == "sequence length" and not whole:
            continue  # every rank holds its own share's length; its own check compares it
        if field == "autograd" and whole:
            continue  # shard_canvas only cuts its own tensor: its backward exchanges nothing
        values = [tuple(row[a:b]) for row in rows]
        if len(set(values)) > 1:
            odd = [r for r, v in enumerate(values) if v != values[0]]
            hint = _CANVAS_HINTS.get(field, (
                "Every rank holds a share of the same canvas, so each call needs the same batch size, dtype, "
                "device type and trailing shape on every rank: feed every rank of the group alike (e.g. the same "
                "sampler seed for the sequence-parallel ranks)"))
            raise SequenceParallelError(
                f"{what} on rank {rank}: the ranks of the sequence-parallel group called it with different {field}: "
                f"rank 0 {_canvas_value(field, rows[0])}, rank {odd[0]} {_canvas_value(field, rows[odd[0]])}"
                + (f" (ranks {odd})" if len(odd) > 1 else "") + f"{own}; nothing was exchanged. {hint}") from failure
    failed = [r for r, row in enumerate(rows) if row[0] == 0]
    if failure is not None and len(failed) == size:
        raise failure  # every rank refused its own input: each says why
    if failed:
        raise SequenceParallelError(
            f"{what} on rank {rank}: rank(s) {failed} refused their input (rank {failed[0]} was given "
            f"{_shape_text(rows[failed[0]])}){own}; every rank stops here, before the exchange, so that none "
            f"waits for the others. Fix the input on rank(s) {failed}") from failure
