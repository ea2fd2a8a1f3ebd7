"""Tensor files that never destroy: non-finite values are refused before the target is touched,
and the safetensors file is written atomically (:mod:`canvas_core._safe_write`)."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type

import torch
from torch import nn

from canvas_core._safe_write import atomic_write
from canvas_core.checkpoints.loaded_values import finite
from canvas_core.errors import CanvasError, CheckpointError

__all__ = ["refuse_non_finite", "save_safetensors_atomic", "check_readable_file", "not_safetensors",
           "unfit_dtype", "read_metadata", "duplicate_names", "is_uninitialized", "REGIONS",
           "conditioner_regions", "conditioner_names", "check_conditioner_regions"]

#: canvas-checkpoint header entry: JSON ``{module name: region names}`` of the semantic conditioners
REGIONS = "conditioner_regions"


def _safetensors_dtypes() -> frozenset:
    """The dtypes the installed safetensors writes (its own table when it has one, else the
    dtypes every release since 0.4 holds, float8 kinds where this torch has them)."""
    global _DTYPES
    if _DTYPES is None:
        try:
            import safetensors.torch as st  # private tables: a release without them gets the list below

            # _TYPES (what it reads) lacks some dtypes it writes and reads back (float8_e8m0fnu in
            # 0.8): those of _SIZE too, when a float copy of them exists (the NaN check casts)
            table = frozenset(v for v in dict(st._TYPES).values() if isinstance(v, torch.dtype))
            table |= frozenset(d for d in dict(getattr(st, "_SIZE", {})) if isinstance(d, torch.dtype)
                               and d.is_floating_point and _casts_to_float(d))
        except (ImportError, TypeError, ValueError):
            table = frozenset()
        _DTYPES = table if torch.float32 in table else frozenset(
            [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex64, torch.bool,
             torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8]
            + [getattr(torch, n) for n in ("uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2")
               if hasattr(torch, n)])
    return _DTYPES


_DTYPES: Optional[frozenset] = None


def _casts_to_float(dtype: torch.dtype) -> bool:
    try:
        torch.zeros(1, dtype=dtype).to(torch.float32)
        return True
    except (RuntimeError, TypeError):  # packed kinds (float4_e2m1fn_x2) have no element copy
        return False


def refuse_non_finite(
    tensors: Mapping[str, Any], what: str, *, error: Type[CanvasError] = CheckpointError
) -> None:
    """Raise ``error`` naming the first floating tensor of ``tensors`` (``name -> Tensor``) that
    holds NaN or an infinity, and how many such values it holds; nothing else is done.

    A sharded ``DTensor`` (FSDP2, tensor parallelism) is refused up front, before any check: a
    check on it would be a collective (every rank would have to run it, or this one waits
    forever), and a file of one rank's shards would be no checkpoint of the model."""
    from canvas_core.checkpoints.sharded import is_dtensor

    sharded = [name for name, t in tensors.items() if is_dtensor(t)]
    if sharded:
        raise error(
            f"refusing to save {what}: tensor(s) {sharded[:3]}{' ...' if len(sharded) > 3 else ''} are "
            "sharded DTensors (a model wrapped by FSDP2's fully_shard or tensor parallelism); gather them "
            "on every rank first (DTensor.full_tensor(), or torch.distributed.checkpoint.state_dict."
            "get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))) and save the "
            "whole tensors, or save with save_canvas_checkpoint called on every rank, which gathers them")
    for name, t in tensors.items():
        if is_uninitialized(t):
            raise error(f"refusing to save {what}: tensor {name!r} is an uninitialized parameter of a lazy module "
                        "(nn.LazyLinear, LazyConv ...: its shape is not known yet); run one forward on a sample "
                        "batch first, which gives it its shape, then save; nothing was written")
        if isinstance(t, torch.Tensor) and t.layout != torch.strided:
            raise error(f"refusing to save {what}: tensor {name!r} is a {t.layout} tensor; safetensors holds "
                        "dense (strided) tensors only: convert it first (e.g. .to_dense()) or keep it out "
                        "of the state dict")
        if isinstance(t, torch.Tensor) and (t.is_quantized or t.dtype not in _safetensors_dtypes()):
            hint = ("dequantize it first (.dequantize())" if t.is_quantized else
                    "store it as torch.view_as_real(t) (a real tensor with a last dim of 2) or as complex64"
                    if t.is_complex() else "convert it to a dtype safetensors holds")
            raise error(f"refusing to save {what}: tensor {name!r} is {t.dtype}, which safetensors cannot hold; "
                        f"{hint}, or keep it out of the state dict; nothing was written")
        if isinstance(t, torch.Tensor) and t.is_meta:
            raise error(f"refusing to save {what}: tensor {name!r} is on the meta device (shapes without "
                        "values: a model built under torch.device('meta') or with init_empty_weights); "
                        "load or initialise its weights first (model.to_empty(device=...) then an init)")
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
            ok = finite(t.detach())
            if not bool(ok.all()):
                bad = int((~ok).sum())
                raise error(
                    f"refusing to save {what}: tensor {name!r} {tuple(t.shape)} holds {bad} NaN or "
                    "infinite value(s) (the run diverged?); the file on disk was left unchanged. "
                    "Lower the learning rate or restore a good checkpoint"
                )


def save_safetensors_atomic(
    tensors: Mapping[str, torch.Tensor],
    path: Any,
    metadata: Optional[Dict[str, str]],
    what: str,
    *,
    error: Type[CanvasError] = CheckpointError,
    make_parents: bool = False,
) -> str:
    """Save ``tensors`` (``name -> Tensor``, any device) with the string header ``metadata`` as
    safetensors at ``path``: refused before touching the file when a tensor is not finite or the
    target is not a regular file, then written through a temporary file and ``os.replace``.
    Returns the real path written."""
    from safetensors.torch import save_file

    refuse_non_finite(tensors, what, error=error)
    cpu: Dict[str, torch.Tensor] = {}
    seen = set()
    for k, v in tensors.items():
        t = v.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()  # safetensors refuses shared or partial storage (tied weights, views)
        seen.add(t.untyped_storage().data_ptr())
        cpu[k] = t

    def write(tmp: str) -> None:
        save_file(cpu, tmp, metadata=metadata)

    return atomic_write(path, write, what, error=error, make_parents=make_parents)


def is_uninitialized(t: Any) -> bool:
    """Whether ``t`` is a lazy module's parameter or buffer without a shape yet (most tensor
    methods raise on it)."""
    return isinstance(t, torch.nn.parameter.UninitializedTensorMixin)


def check_readable_file(path: str, what: str) -> None:
    """Refuse, with a :class:`CheckpointError` naming ``what`` and ``path``, a checkpoint path that
    is a directory, not a regular file (device, FIFO, socket), or missing."""
    if os.path.isdir(path):
        raise CheckpointError(f"{what} {path!r} is a directory; give the .safetensors file in it")
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} {path!r} " + (
            "is not a regular file (a device, FIFO or socket); give the .safetensors file" if os.path.exists(path)
            else _broken_link(path) if os.path.islink(path) else "does not exist"))


def _broken_link(path: str) -> str:
    """Why the symbolic link ``path`` leads to no file: a loop of links, or a missing target."""
    import errno

    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link in a loop of links (it never reaches a file); point it at the checkpoint"
    return (f"is a symbolic link to {os.readlink(path)!r}, which does not exist (moved or deleted?); point the "
            "link at the checkpoint or give the file's path")


def check_utf8_path(path: str, what: str) -> None:
    """Refuse a path that is not valid UTF-8 (undecodable bytes of a file name, which Python keeps
    as surrogates): the safetensors library opens files by UTF-8 paths only, so a file written
    there could never be read back."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError(
            f"{what} {path!r}: the path is not valid UTF-8 (its name holds bytes that decode to no character), "
            "and safetensors opens UTF-8 paths only; rename the file or folder, or give another path") from None


def pickled(head: bytes) -> bool:
    """Whether a file starting with ``head`` (its first 4 bytes or more) is a pickle or
    ``torch.save`` file: a zip archive (``torch.save`` since torch 1.6), or a pickle of protocol 2
    to 5 (``0x80``, the protocol, then a frame opcode ``0x95`` for protocols 4 and 5, or another
    opcode).  A safetensors file starts with the length of its header (8 bytes, little-endian),
    so a header of ``0x0480`` bytes also starts ``80 04``: its third byte is 0 (no opcode)."""
    if head[:4] == b"PK\x03\x04":
        return True
    if len(head) < 3 or head[0] != 0x80 or head[1] not in (2, 3, 4, 5):
        return False
    return head[2] == 0x95 if head[1] >= 4 else head[2] != 0x00


#: the largest header the safetensors library reads (100 MB); a longer one is no safetensors file
_MAX_HEADER = 100_000_000


def not_safetensors(path: str) -> str:
    """Why the file at ``path`` cannot be a safetensors file at all, judged from its first bytes,
    or ``""`` when it could be one (perhaps cut short: see :func:`truncation`).  A safetensors
    file starts with the length of its JSON header as 8 little-endian bytes (at most 100 MB, so
    the last four are 0), then the header's ``{``; text such as a JSON file gives a length of
    petabytes instead.  Call it once the file failed to open, after :func:`pickled`."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except OSError:
        return ""
    if not head:
        return "it is empty (0 bytes)"
    length = int.from_bytes(head[:8].ljust(8, b"\x00"), "little")
    if length <= _MAX_HEADER and (len(head) < 9 or head[8:9] in (b"{", b" ", b"\t", b"\r", b"\n")):
        return ""
    text = head.decode("utf-8", errors="replace").rstrip("\ufffd")  # a character cut at byte 24
    if text.strip() and all((c.isprintable() or c.isspace()) and c != "\ufffd" for c in text):
        kind = " (a JSON file?)" if text.lstrip()[:1] in ("{", "[") else ""
        return (f"it starts with text {text!r}{kind}, not with the 8-byte binary header length every "
                "safetensors file starts with")
    return (f"its first bytes ({head[:8].hex(' ')}) are not the 8-byte header length every safetensors file "
            + ("starts with (they give more than 100 MB)" if length > _MAX_HEADER else "starts with ('{' missing after them)"))


def truncation(path: str) -> str:
    """``", truncated: ..."`` when the safetensors header at the start of ``path`` (its length,
    then its JSON with each tensor's byte range) describes more bytes than the file holds (an
    interrupted write or copy), else ``""``."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            if len(head) < 8 or 8 + n > size:
                return (f", truncated: it holds {size} bytes, fewer than the header it starts with "
                        "describes (an interrupted write or copy?)")
            ranges = json.loads(fh.read(n)) if n <= 64 * 2**20 else {}
    except (OSError, ValueError, RecursionError):
        return ""
    ends = []  # a tampered header may hold anything as data_offsets: only [start, end] of ints counts
    for r in ranges.values() if isinstance(ranges, dict) else []:
        offsets = r.get("data_offsets") if isinstance(r, dict) else None
        if isinstance(offsets, list) and len(offsets) == 2 and isinstance(offsets[1], int):
            ends.append(offsets[1])
    need = 8 + n + max(ends, default=0)
    if need > size:
        return f", truncated: its header describes {need} bytes, the file holds {size} (an interrupted write or copy?)"
    return ""


def duplicate_names(path: str) -> str:
    """Why the JSON header of the safetensors file at ``path`` is ambiguous, or ``""``: a tensor
    name, a header entry (``schema``, ``user_metadata`` ...) or a field of a tensor given twice.
    The safetensors library keeps the last of them without a word, so a hand-edited or foreign
    file could load another tensor than the one its first entry describes.  Call it once the file
    opened: an unreadable header is left to the library's own error."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            if not 0 < n <= _MAX_HEADER:
                return ""
            body = fh.read(n)
    except OSError:
        return ""
    objects: List[Tuple[Dict[str, Any], List[str]]] = []  # every JSON object, innermost first

    def hook(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        twice = []
        for key, value in pairs:
            if key in out:
                twice.append(key)
            out[key] = value
        objects.append((out, twice))
        return out

    try:
        top = json.loads(body, object_pairs_hook=hook)
    except (ValueError, RecursionError):
        return ""
    meta = top.get("__metadata__") if isinstance(top, dict) else None
    for obj, twice in reversed(objects):  # the top level (tensor names) is parsed last
        if twice:
            key = twice[0]
            if obj is top:
                what = "the header entry '__metadata__'" if key == "__metadata__" else f"tensor {key!r}"
            elif obj is meta:
                what = f"the header entry {key!r}"
            else:
                what = f"the field {key!r} of a tensor"
            break
    else:
        return ""
    return f"its header gives {what} more than once (the safetensors library would silently keep the last)"


def metadata_json(metadata: Mapping[str, Any], where: str) -> str:
    """``metadata`` as the JSON a checkpoint header stores, refused (``CheckpointError`` naming
    ``where``) unless it reads back as given: keys are strings at every level (JSON would turn
    ``{1: 2}`` into ``{"1": 2}``), numbers finite (NaN is not JSON), values JSON types."""
    def check(value: Any, at: str, inside: Tuple[int, ...]) -> None:
        if isinstance(value, (Mapping, list, tuple)) and id(value) in inside:
            raise CheckpointError(f"{where}: metadata holds itself at {at} (a cycle JSON cannot write); store "
                                  "a copy of the values instead")
        if isinstance(value, Mapping):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise CheckpointError(f"{where}: metadata key {k!r} at {at} is a {type(k).__name__}; JSON keys "
                                          "are strings (it would come back as a string): use str keys")
                check(v, f"{at}[{k!r}]", inside + (id(value),))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                check(v, f"{at}[{i}]", inside + (id(value),))

    try:
        check(metadata, "metadata", ())
        return json.dumps(dict(metadata), sort_keys=True, allow_nan=False)
    except CheckpointError:
        raise
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: metadata must be JSON-serialisable with finite numbers: {exc}") from None
    except RecursionError:
        raise CheckpointError(f"{where}: metadata is nested too deeply to be written as JSON (and read back); "
                              "flatten it (a few levels of dicts and lists)") from None


def read_metadata(header: Mapping[str, Any], path: str) -> Dict[str, Any]:
    """The header's ``user_metadata`` decoded: a JSON object of finite numbers, as
    :func:`metadata_json` writes it, else ``CheckpointError`` (a hand-edited ``NaN`` or a list)."""
    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not a finite number")

    try:
        user = json.loads(header.get("user_metadata", "{}") or "{}", parse_constant=refuse)
    except (ValueError, RecursionError) as exc:  # malformed JSON, NaN / Infinity, numbers Python refuses
        raise CheckpointError(f"{path!r} has a corrupt header: user_metadata: {exc}") from None
    if not isinstance(user, dict):
        raise CheckpointError(f"{path!r} has a corrupt header: user_metadata is a {type(user).__name__}, not the "
                              "JSON object save_*_checkpoint writes")
    return user


def unfit_dtype(saved: torch.Tensor, model: torch.Tensor) -> str:
    """Why a saved tensor cannot be copied into the model's tensor of that name, or ``""``: the
    kinds (floating / complex / integer or bool) must match, and an integer or bool tensor must
    have the model's very dtype (a copy would wrap, e.g. int64 ``2**40 + 1`` into int32 ``1``, or
    turn every non-zero into ``True``).  A floating tensor is cast to the model's float dtype."""
    kind = (saved.is_floating_point(), saved.is_complex())
    if kind != (model.is_floating_point(), model.is_complex()):
        return f"is {saved.dtype} but the model's is {model.dtype}"
    if not any(kind) and saved.dtype != model.dtype:
        return (f"is {saved.dtype} but the model's is {model.dtype} (integer and bool tensors are not "
                "converted: the values would wrap or change); build the model with the saved dtype")
    return ""


def non_finite(t: torch.Tensor) -> bool:
    """Whether the floating or complex tensor ``t`` holds NaN or an infinity."""
    return (t.is_floating_point() or t.is_complex()) and not bool(finite(t).all())


def header_entry(p: str, header: Mapping[str, str], key: str, valid: Any, shape: str) -> Any:
    """The header's JSON entry ``key`` decoded, None for a file without it (written before it
    existed); an entry that is not JSON or fails ``valid`` (a predicate on the decoded value) is a
    corrupt header, described as "not a JSON object of ``shape``"."""
    if key not in header:
        return None
    try:
        saved = json.loads(header[key])
    except (ValueError, RecursionError):
        saved = None
    if not valid(saved):
        raise CheckpointError(f"{p!r} has a corrupt header: its {key!r} entry is not a JSON object of {shape}; "
                              "save the model again with save_canvas_checkpoint")
    return saved


def conditioner_regions(p: str, header: Mapping[str, str]) -> Optional[Dict[str, List[str]]]:
    """The header's ``{module name: region names}`` of the semantic conditioners, None for a file
    without the entry (written before it existed); a malformed entry is a corrupt header."""
    return header_entry(p, header, REGIONS, lambda saved: isinstance(saved, dict) and all(
        isinstance(v, list) and all(isinstance(n, str) for n in v) for v in saved.values()),
        "module name -> region names")


def conditioner_names(model: nn.Module) -> Dict[str, List[str]]:
    """``{module name as the plain model has it: region names}`` of every semantic conditioner in
    ``model``: a module with ``get_conditioning`` and a ``region_names`` list (canvas-core's
    ``SemanticConditioner`` or canvas-engineering's)."""
    from canvas_core.runtime.compiled_names import plain_names

    found = {}
    for own, module in model.named_modules():
        names = getattr(module, "region_names", None) if callable(getattr(module, "get_conditioning", None)) else None
        if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
            found[own] = sorted(names)
    return {plain: found[own] for own, plain in plain_names(model, found).items()}


def check_conditioner_regions(model: nn.Module, saved: Optional[Mapping[str, List[str]]], p: str) -> None:
    """Refuse a file whose semantic conditioner had other regions than the model's at the same
    place: its rows, one per region by sorted name, would load under the wrong names."""
    current = conditioner_names(model) if saved else {}
    for path, new in current.items():
        old = sorted(saved[path]) if path in saved else new
        if old != new:
            raise CheckpointError(
                f"canvas checkpoint {p!r} was saved with the semantic conditioner {path or '<model>'!r} of the "
                f"regions {old}, the model's has {new} (only in the file: {sorted(set(old) - set(new))}; only in "
                f"the model: {sorted(set(new) - set(old))}); its rows would condition the wrong regions. Build the "
                "conditioner with the saved regions (read_canvas_checkpoint_header(path)['conditioner_regions']). "
                "Nothing was loaded")
