"""Tensor files that never destroy: non-finite values are refused before the target is touched,
and the safetensors file is written atomically (:mod:`canvas_core._safe_write`)."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Optional, Type

import torch

from canvas_core._safe_write import atomic_write
from canvas_core.errors import CanvasError, CheckpointError

__all__ = ["refuse_non_finite", "save_safetensors_atomic", "check_readable_file", "not_safetensors",
           "unfit_dtype", "read_metadata"]


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
        if isinstance(t, torch.Tensor) and t.layout != torch.strided:
            raise error(f"refusing to save {what}: tensor {name!r} is a {t.layout} tensor; safetensors holds "
                        "dense (strided) tensors only: convert it first (e.g. .to_dense()) or keep it out "
                        "of the state dict")
        if isinstance(t, torch.Tensor) and t.is_meta:
            raise error(f"refusing to save {what}: tensor {name!r} is on the meta device (shapes without "
                        "values: a model built under torch.device('meta') or with init_empty_weights); "
                        "load or initialise its weights first (model.to_empty(device=...) then an init)")
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
            finite = torch.isfinite(t.detach())
            if not bool(finite.all()):
                bad = int((~finite).sum())
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


def check_readable_file(path: str, what: str) -> None:
    """Refuse, with a :class:`CheckpointError` naming ``what`` and ``path``, a checkpoint path that
    is a directory, not a regular file (device, FIFO, socket), or missing."""
    if os.path.isdir(path):
        raise CheckpointError(f"{what} {path!r} is a directory; give the .safetensors file in it")
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{what} {path!r} "
            + ("is not a regular file (a device, FIFO or socket); give the .safetensors file"
               if os.path.exists(path) else "does not exist"))


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


def metadata_json(metadata: Mapping[str, Any], where: str) -> str:
    """``metadata`` as the JSON a checkpoint header stores, refused (``CheckpointError`` naming
    ``where``) unless it reads back as given: keys are strings at every level (JSON would turn
    ``{1: 2}`` into ``{"1": 2}``), numbers finite (NaN is not JSON), values JSON types."""
    def check(value: Any, at: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise CheckpointError(f"{where}: metadata key {k!r} at {at} is a {type(k).__name__}; JSON keys "
                                          "are strings (it would come back as a string): use str keys")
                check(v, f"{at}[{k!r}]")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                check(v, f"{at}[{i}]")

    check(metadata, "metadata")
    try:
        return json.dumps(dict(metadata), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: metadata must be JSON-serialisable with finite numbers: {exc}") from None


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
    return (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())
