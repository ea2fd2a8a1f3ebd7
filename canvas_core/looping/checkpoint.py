"""Loop checkpoints: only the loop parameters and the action head, as safetensors.

File layout: tensors ``blocks.<i>.<param>`` (loop embeddings, gates) and ``head.<name>`` (the
head's state dict, named as the bare head names it whatever wraps the head: torch.compile, DDP), plus
a string ``__metadata__`` header::

    format            "canvas-core/loop-checkpoint"
    format_version    "1"
    canvas_core_version, torch_version
    structure         JSON: per block its class and loop-parameter shapes, the head's shapes,
                      and the options that change its function without changing a shape
    structure_hash    sha256 of ``structure``
    recorded_options  JSON list of the options this writer records whenever they are set
                      (``sharpening``, ``reenter``); a file without it predates them, so the
                      loader does not compare them (unknown), instead of reading "not set"
    schema_hash       hash of the canvas schema the loops were trained with ("" if none)
    user_metadata     JSON of the ``metadata`` argument

Loading never unpickles; a checkpoint whose structure or schema differs from the model is refused
with a :class:`CheckpointError` that says what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from canvas_core.checkpoints.loaded_values import loaded_value, refuse_differing_ties, unwritable
from canvas_core.checkpoints.tensors import (
    duplicate_names,
    metadata_json,
    not_safetensors,
    pickled,
    read_metadata,
    truncation,
    unfit_dtype,
)
from canvas_core.errors import CanvasTypeError, CheckpointError
from canvas_core.looping.checkpoint_options import (RECORDED_OPTIONS, _callable_name, _comparable,  # noqa: F401
                                                    _known_options, _loop_options, _recorded_options, _schedule_text)
from canvas_core.runtime.compiled_names import plain_name, plain_names

__all__ = ["save_loop_checkpoint", "load_loop_checkpoint", "loop_structure"]

FORMAT = "canvas-core/loop-checkpoint"
FORMAT_VERSION = "1"


def _loop_params(block: nn.Module) -> List[tuple]:
    named = getattr(block, "named_loop_parameters", None)
    if named is None:
        raise CanvasTypeError(f"looped block {type(block).__name__} has no named_loop_parameters(); pass the "
                              "blocks returned by graft_looped_blocks")
    return list(named())


def _check_modules(looped_blocks: Any, action_head: Any, where: str) -> None:
    if isinstance(looped_blocks, (nn.Module, str, bytes)) or not hasattr(looped_blocks, "__iter__"):
        raise CanvasTypeError(
            f"{where}: looped_blocks must be the list of looped blocks returned by "
            f"graft_looped_blocks, got {type(looped_blocks).__name__}"
        )
    if action_head is not None and not isinstance(action_head, nn.Module):
        raise CanvasTypeError(f"{where}: action_head must be an nn.Module (the ActionHead from "
                              f"graft_looped_blocks) or None, got {type(action_head).__name__}")


def _check_path(path: Any, where: str) -> str:
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise CanvasTypeError(f"{where}: path must be a file path (str or os.PathLike), got {path!r}")
    return os.fspath(path)


def _refuse_pickle(path: str) -> None:
    """A clear refusal for pickle / ``torch.save`` files (never unpickled); called only once the
    file failed to open as safetensors (whose first bytes are an arbitrary header length)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as e:
        raise CheckpointError(f"cannot read loop checkpoint {path!r}: {e.strerror or e}") from e
    if pickled(head):
        raise CheckpointError(
            f"{path!r} is not a readable safetensors loop checkpoint: it is a pickle / torch.save "
            "file, and canvas-core never unpickles checkpoints. Save the loops with save_loop_checkpoint"
        )


def loop_structure(
    looped_blocks: Sequence[nn.Module], action_head: Optional[nn.Module], *,
    head_state: Optional[Mapping[str, torch.Tensor]] = None,
) -> Dict[str, Any]:
    """JSON-able description of what a loop checkpoint of these modules holds (``head_state``: the
    head's tensors under their plain names when the caller has read them already)."""
    _check_modules(looped_blocks, action_head, "loop_structure")
    blocks = []
    for b in looped_blocks:
        inner = getattr(b, "original", b)
        entry = {
            "block": type(inner).__qualname__,
            "params": {n: list(p.shape) for n, p in _loop_params(b)},
        }
        scope = getattr(b, "loop_scope", "")  # span / model scopes (block-scope files unchanged)
        if scope:
            entry["scope"] = scope
        options = _loop_options(b) if scope else _recorded_options(b)
        if options:
            entry["options"] = options
        blocks.append(entry)
    head = _head_view(action_head)[0] if head_state is None else head_state
    return {"blocks": blocks, "head": {n: list(t.shape) for n, t in head.items()}}


def _head_view(head: Optional[nn.Module]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """``head``'s state dict under its plain names (no ``_orig_mod.`` of torch.compile, no
    ``module.`` of DataParallel), so that compiled, wrapped and plain heads read each other's
    files, and the map from the head's own names to the plain ones; one ``state_dict()`` call."""
    if head is None:
        return {}, {}
    state = head.state_dict()
    names = plain_names(head, state)
    return {plain: state[n] for n, plain in names.items()}, names


def _file_names(own: Mapping[str, str]) -> Callable[[str], str]:
    """A head tensor's name in a file -> its plain name: files written before the names were plain
    hold the wrapped head's own names (``own``'s keys: ``_orig_mod.``, ``module.``), mapped back."""
    return lambda n: own.get(n) or plain_name(n)


def _hash(obj: Any) -> str:
    return hashlib.sha256(
        json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def _schema_hash(schema: Any) -> str:
    if schema is None:
        return ""
    if isinstance(schema, str):
        return schema
    fn = getattr(schema, "schema_hash", None)
    if callable(fn):
        return fn()
    raise CanvasTypeError(
        f"schema must be a CanvasSchema or its hash string, got {type(schema).__name__}"
    )


def _blocks_schema_hash(looped_blocks: Sequence[nn.Module]) -> str:
    hashes = {getattr(b, "schema_hash", "") or "" for b in looped_blocks}
    hashes.discard("")
    return hashes.pop() if len(hashes) == 1 else ""


def save_loop_checkpoint(
    looped_blocks: List[nn.Module],
    action_head: nn.Module,
    path: str,
    metadata: Optional[Dict] = None,
    *,
    schema: Any = None,
) -> None:
    """Save only the loop parameters of ``looped_blocks`` and ``action_head``'s state to
    ``path`` (safetensors). ``metadata`` must be JSON-serialisable; a ``"schema"`` (CanvasSchema)
    or ``"schema_hash"`` entry, or ``schema=``, records the canvas schema the loops belong to.
    The folder of ``path`` must exist (a ``CheckpointError`` says to create it, as every writer of
    canvas-core does); nothing is written when anything is refused."""
    import canvas_core
    from canvas_core.checkpoints.tensors import save_safetensors_atomic

    _check_modules(looped_blocks, action_head, "save_loop_checkpoint")
    looped_blocks = list(looped_blocks)
    if not looped_blocks:  # a file of no loops, which a load would misreport as another scope's
        raise CanvasTypeError(
            "save_loop_checkpoint: looped_blocks is empty, so the file would hold no loop parameter; "
            "pass the list graft_looped_blocks returned, or canvas_core.looping.loop_parts_of(model) "
            "(looped_blocks_of lists the block scope's wrappers only)")
    path = _check_path(path, "save_loop_checkpoint")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise CheckpointError(
            f"save_loop_checkpoint: metadata must be a dict of JSON-serialisable values, got "
            f"{type(metadata).__name__} {metadata!r:.80}"
        )
    if os.path.isdir(path):
        raise CheckpointError(
            f"cannot save the loop checkpoint to {path!r}: it is a directory; give a file path such "
            "as loops.safetensors"
        )
    meta = dict(metadata or {})
    schema_obj = schema if schema is not None else meta.pop("schema", None)
    shash = (
        _schema_hash(schema_obj)
        if schema_obj is not None
        else str(meta.get("schema_hash", "") or "")
    )
    shash = shash or _blocks_schema_hash(looped_blocks)
    user = metadata_json(meta, "save_loop_checkpoint")
    tensors: Dict[str, torch.Tensor] = {}
    for i, b in enumerate(looped_blocks):
        for n, p in _loop_params(b):
            tensors[f"blocks.{i}.{n}"] = p.detach().to("cpu").contiguous()
    head_state = _head_view(action_head)[0]
    for n, t in head_state.items():
        tensors[f"head.{n}"] = t.detach().to("cpu").contiguous()
    structure = loop_structure(looped_blocks, action_head, head_state=head_state)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "canvas_core_version": canvas_core.__version__,
        "torch_version": torch.__version__,
        "structure": json.dumps(structure, sort_keys=True),
        "structure_hash": _hash(structure),
        "recorded_options": json.dumps(list(RECORDED_OPTIONS)),
        "schema_hash": shash,
        "user_metadata": user,
    }
    # refuses NaN/inf, non-regular targets and a missing folder (like every other writer) before
    # touching the file; atomic replace
    save_safetensors_atomic(tensors, path, header, "the loop checkpoint")


def _scope_text(scope: str) -> str:
    return scope if scope.startswith("(") else repr(scope)


def _describe_diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    sh, ch = saved.get("head", {}), current.get("head", {})
    if bool(sh) != bool(ch):
        return (
            "the checkpoint holds an action head but none was given (pass the ActionHead)"
            if sh
            else "an action head was given but the checkpoint holds none (pass action_head=None)"
        )
    sb, cb = saved.get("blocks", []), current.get("blocks", [])
    ss = [b.get("scope", "block") for b in sb if isinstance(b, dict)][:1] or ["block"]
    cs = [b.get("scope", "block") for b in cb][:1] or ["block"]
    if ss != cs:
        return (
            f"it was saved from loops of scope {_scope_text(ss[0])} and this model is grafted "
            f"with scope {_scope_text(cs[0])}; graft a fresh model with scope={_scope_text(ss[0])} "
            "to load it"
        )
    if len(sb) != len(cb):
        return f"the checkpoint has {len(sb)} looped blocks, the model has {len(cb)}"
    so = [b.get("options", {}) for b in sb][:1] or [{}]
    co = [b.get("options", {}) for b in cb][:1] or [{}]
    if so != co:
        unset = {k: None for k in RECORDED_OPTIONS if k in so[0] or k in co[0]}
        base = {"update": "gated", "iter_norm": None} if cs[0] != "block" else {}

        def text(o: Mapping[str, Any]) -> str:
            o = {**base, **unset, **o}
            return ", ".join(f"{k}={v!r}" for k, v in sorted(o.items()))
        return (
            f"it was saved from loops grafted with {text(so[0])} and this model is grafted with "
            f"{text(co[0])}; graft a fresh model with the checkpoint's options to load it"
        )
    for i, (s, c) in enumerate(zip(sb, cb)):
        if s.get("block") != c.get("block"):
            return (
                f"block {i} is a {c.get('block')} in the model but a {s.get('block')} "
                "in the checkpoint"
            )
        if s.get("params") != c.get("params"):
            sp, cp = s.get("params", {}), c.get("params", {})
            for n in sorted(set(sp) | set(cp)):
                if n.startswith("canvas_fn.") and (n in sp) != (n in cp):
                    # the gated modules of a topology's non-softmax types (install_topology)
                    fn = n.split(".")[1]
                    where = ("the checkpoint" if n in sp else "the model") + " but not in " + (
                        "the model" if n in sp else "the checkpoint")
                    return (
                        f"block {i} parameter {n!r} (the module of fn type {fn!r} of an installed "
                        f"canvas topology) is in {where}; install the topology the loops were "
                        "trained with (adapter.install_topology) before loading, or remove it"
                    )
                if (n in sp) != (n in cp):
                    where = "the checkpoint holds" if n in sp else "the model has"
                    other = "the model" if n in sp else "the checkpoint"
                    return (
                        f"block {i}: {where} loop parameter {n!r} and {other} does not (grafted "
                        "with other inject= / update= / iter_embed= / step_adapter= options?); graft "
                        "a fresh model with the options the checkpoint was trained with"
                    )
                if sp.get(n) != cp.get(n):
                    return (
                        f"block {i} parameter {n!r} has shape {cp.get(n)} in the model but "
                        f"{sp.get(n)} in the checkpoint (different max_loops or hidden size?)"
                    )
    if saved.get("head") != current.get("head"):
        sh, ch = saved.get("head", {}), current.get("head", {})
        for n in sorted(set(sh) | set(ch)):
            if (n in sh) != (n in ch):
                return (f"the {'checkpoint' if n in sh else 'model'}'s action head has tensor {n!r} and the other "
                        "has not (another head, or one inside a wrapper the other lacks: wrap both alike, or save the bare head)")
            if sh.get(n) != ch.get(n):
                return f"action head tensor {n!r} has shape {ch.get(n)} in the model but {sh.get(n)} in the checkpoint"
    return "the structures differ"


def load_loop_checkpoint(
    looped_blocks: List[nn.Module],
    action_head: nn.Module,
    path: str,
    *,
    schema: Any = None,
) -> Dict[str, Any]:
    """Load loop parameters and the action head from ``path`` into the given modules (in place).

    Refuses (``CheckpointError``) a file that is not a canvas loop checkpoint, one whose block
    count / loop shapes / head differ from the modules, and one recorded for another canvas
    schema than ``schema`` (or the schema the blocks carry). Returns the header, with
    ``user_metadata`` decoded."""
    from safetensors import SafetensorError, safe_open

    from canvas_core.checkpoints.tensors import check_readable_file

    _check_modules(looped_blocks, action_head, "load_loop_checkpoint")
    looped_blocks = list(looped_blocks)  # read three times below: a generator would be spent
    path = _check_path(path, "load_loop_checkpoint")
    check_readable_file(path, "loop checkpoint")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            header = dict(f.metadata() or {})
            keys = list(f.keys())
            tensors = {k: f.get_tensor(k) for k in keys}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        _refuse_pickle(path)  # a clearer message for pickle / torch.save files
        other = not_safetensors(path)
        if other:
            raise CheckpointError(f"{path!r} is not a loop checkpoint, nor any safetensors file: {other}; give the "
                                  ".safetensors file save_loop_checkpoint wrote") from None
        raise CheckpointError(f"{path!r} is not a readable safetensors loop checkpoint{truncation(path)}: {e}") from e
    twice = duplicate_names(path)
    if twice:
        raise CheckpointError(f"{path!r} is a corrupt loop checkpoint: {twice}, so it is unclear which one was "
                              "meant; save the loops again with save_loop_checkpoint (the file was edited by hand "
                              "or written by another tool)")
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a canvas-core loop checkpoint (format {header.get('format')!r}); "
                              "save one with save_loop_checkpoint")
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path!r} has loop-checkpoint format version {header.get('format_version')!r}; this "
                              f"canvas-core reads version {FORMAT_VERSION}")
    try:
        saved = json.loads(header.get("structure", ""))
    except (ValueError, RecursionError) as e:  # malformed JSON, or numbers Python refuses to read
        raise CheckpointError(f"{path!r} has a corrupt header: {e}") from None
    user = read_metadata(header, path)
    if (
        not isinstance(saved, dict)
        or not isinstance(saved.get("blocks", []), list)
        or not all(isinstance(b, dict) for b in saved.get("blocks", []))
        or not isinstance(saved.get("head", {}), dict)
    ):
        raise CheckpointError(
            f"{path!r} has a corrupt header: 'structure' is not the description of looped blocks "
            "and a head written by save_loop_checkpoint"
        )
    current_head, head_names = _head_view(action_head)  # the head's state is read once
    current = _comparable(loop_structure(looped_blocks, action_head, head_state=current_head),
                          _known_options(header))
    rename, wanted = _file_names(head_names), header.get("structure_hash")
    plain = {**saved, "head": {rename(n): s for n, s in saved.get("head", {}).items()}}
    if wanted != _hash(current) and not (wanted == _hash(saved) and _hash(plain) == _hash(current)):
        raise CheckpointError(f"loop checkpoint {path!r} does not match this model: {_describe_diff(plain, current)}")
    expected = _schema_hash(schema) if schema is not None else _blocks_schema_hash(looped_blocks)
    saved_schema = header.get("schema_hash", "")
    if expected and saved_schema and expected != saved_schema:
        raise CheckpointError(f"loop checkpoint {path!r} was trained with canvas schema {saved_schema[:12]}..., not "
                              f"with this schema {expected[:12]}...; load it into a model using the same schema")
    # check every tensor before writing any, so a bad file leaves the model untouched
    pairs = [(f"blocks.{i}.{n}", p) for i, b in enumerate(looped_blocks) for n, p in _loop_params(b)]
    state: Dict[str, torch.Tensor] = {}  # the head's tensors under their plain names
    for k in [k for k in keys if k.startswith("head.")]:
        n = rename(k[len("head."):])
        if n in state:
            raise CheckpointError(f"loop checkpoint {path!r} holds two action-head tensors named {n!r} once the names "
                                  "of wrappers (torch.compile's '_orig_mod.') are dropped; keep one (save the loops again)")
        state[n] = tensors.pop(k)
    tensors.update((f"head.{n}", t) for n, t in state.items())
    if action_head is not None:
        extra = sorted(set(state) - set(current_head))
        if extra:
            raise CheckpointError(f"loop checkpoint {path!r} has action-head tensors {extra} the model lacks")
        pairs.extend((f"head.{n}", t) for n, t in current_head.items())
    expected_keys = {key for key, _ in pairs}
    unexpected = sorted(k for k in tensors if k not in expected_keys and not k.startswith("head."))
    if unexpected:
        raise CheckpointError(f"loop checkpoint {path!r} has tensors {unexpected[:5]} that no looped block of this "
                              "model holds; the file is corrupt or belongs to another model")
    for key, p in pairs:
        if key not in tensors:
            raise CheckpointError(f"loop checkpoint {path!r} lacks tensor {key!r}")
        t = tensors[key]
        if tuple(t.shape) != tuple(p.shape):
            raise CheckpointError(f"loop checkpoint {path!r}: tensor {key!r} has shape {tuple(t.shape)} but the "
                                  f"model's is {tuple(p.shape)}; the file is corrupt or belongs to another model")
        if p.is_meta:
            raise CheckpointError(f"cannot load loop checkpoint {path!r}: the model's tensor {key!r} is on the meta "
                                  "device (shapes without storage), where a copy does nothing; give the modules storage "
                                  "first (e.g. .to_empty(device='cpu')), then load")
        unfit = unfit_dtype(t, p)
        if unfit:
            raise CheckpointError(f"loop checkpoint {path!r}: tensor {key!r} {unfit}; the file is corrupt or "
                                  "belongs to another model")
        why = unwritable(p)
        if why:
            raise CheckpointError(f"cannot load loop checkpoint {path!r}: the model's tensor {key!r} {why}")
        tensors[key] = loaded_value(t, p.dtype, key, f"loop checkpoint {path!r}")  # cast, then checked
        if key.startswith("head."):
            state[key[len("head."):]] = tensors[key]
    refuse_differing_ties([(key, p, tensors[key]) for key, p in pairs], f"loop checkpoint {path!r}")
    with torch.no_grad():
        for key, p in pairs:
            if key.startswith("blocks."):
                p.copy_(tensors[key].to(dtype=p.dtype, device=p.device))
        if action_head is not None:  # back to the head's own (wrapped) names
            own = {plain: n for n, plain in head_names.items()}
            action_head.load_state_dict({own[n]: t for n, t in state.items()}, strict=True)
    out = dict(header)
    out["user_metadata"] = user
    return out
