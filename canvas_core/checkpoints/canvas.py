"""Canvas-model checkpoints that know their schema.

File: safetensors holding ``model.state_dict()`` under the plain model's names (the keys its
``load_state_dict`` takes, without the segments of wrappers such as ``torch.compile``, DDP or
sequence parallelism; sharded ``DTensor`` s gathered whole) and a string header::

    format               "canvas-core/canvas-checkpoint"
    format_version       "1"
    canvas_core_version, torch_version
    model_class          the (unwrapped) model's class name (informative)
    schema               JSON of CanvasSchema.to_dict() (layout, regions, topology, metadata)
    schema_hash          CanvasSchema.schema_hash() of that schema
    user_metadata        JSON of the ``metadata`` argument
    conditioner_regions  JSON ``{module name: region names}`` of the model's semantic conditioners
                         (only when it has one); a file without it (older) loads by row
    identity_binders     JSON ``{module name: {region: binding_fn, mode, slot_capacity,
                         birth_death}}`` (only when it has identity binders; see binders.py)
    region_keys          JSON ``{tensor name: region}`` of modality embeddings keyed by layout index
                         (regions whose keys coincide); mapped by region on load, see region_keys.py

Loading never unpickles. It refuses, naming what differs, a file saved for another schema (canvas
size, width, regions, connections and their offsets ...) and a model whose canvas modules were
built from another layout or topology than the schema, or whose semantic conditioner has other
regions than the saved one (its rows would condition the wrong regions); every tensor is checked
(names, shapes, finite values) before the model is changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from canvas_core._safe_write import check_write_target
from canvas_core.checkpoints.binders import BINDERS, binder_configs, check_binder_configs, saved_binder_configs
from canvas_core.checkpoints.diff import schema_differences
from canvas_core.checkpoints.loaded_values import loaded_value, refuse_differing_ties
from canvas_core.checkpoints.region_keys import header_record, region_key_entry, region_key_owners, remap_file_names
from canvas_core.checkpoints.tensors import (
    REGIONS,
    check_conditioner_regions,
    check_readable_file,
    check_utf8_path,
    conditioner_names,
    conditioner_regions,
    duplicate_names,
    is_uninitialized,
    metadata_json,
    read_metadata,
    not_safetensors,
    pickled,
    refuse_non_finite,
    save_safetensors_atomic,
    truncation,
    unfit_dtype,
)
from canvas_core.errors import CanvasTypeError, CheckpointError
from canvas_core.checkpoints.sharded import is_dtensor, model_class_name, shard_like
from canvas_core.runtime.compiled_names import plain_name, plain_names, unwrap_model

__all__ = ["save_canvas_checkpoint", "load_canvas_checkpoint", "read_canvas_checkpoint_header"]

FORMAT = "canvas-core/canvas-checkpoint"
FORMAT_VERSION = "1"


def _as_schema(schema: Any, where: str) -> Any:
    """A ``CanvasSchema`` from a schema, a ``CanvasLayout`` (no topology) or an object carrying
    one as ``.schema`` (``BoundSchema``, ``CanvasProgram``, ``CompiledProgram``)."""
    from canvas_core.schema import CanvasLayout, CanvasSchema

    if isinstance(schema, CanvasSchema):
        return schema
    if isinstance(schema, CanvasLayout):
        return CanvasSchema(layout=schema)
    inner = getattr(schema, "schema", None)
    if isinstance(inner, CanvasSchema):
        return inner
    raise CanvasTypeError(
        f"{where}: schema must be the CanvasSchema the model was built from (or a CanvasLayout / "
        f"a program carrying one), got {type(schema).__name__} {schema!r:.60}"
    )


def _canvas_parts(model: nn.Module) -> List[Tuple[str, Any, Any, Any]]:
    """``(name, layout, topology, holder of the build's stamps)`` of every canvas module in ``model``: a
    canvas (no topology), an execution plan, a backbone's installed plan (no layout: the token layout)."""
    from canvas_core.compiler.plan import ExecutionPlan
    from canvas_core.runtime.canvas import SpatiotemporalCanvas

    found, installed = [], set()
    for name, m in model.named_modules():
        name = name or "<model>"
        if isinstance(m, SpatiotemporalCanvas):
            found.append((name, m.layout, None, m))
        plan = m.__dict__.get("plan")
        if isinstance(plan, ExecutionPlan):
            found.append((name, plan.layout, plan.topology, m))
        for o in (m, *m.__dict__.values()):  # the module or its attention processor holds a BlockTopology
            attrs = getattr(o, "__dict__", None)
            shared = getattr(attrs.get("canvas_topology"), "shared", None) if isinstance(attrs, dict) else None
            if isinstance(getattr(shared, "plan", None), ExecutionPlan) and id(shared) not in installed:
                installed.add(id(shared))
                found.append((f"{name} (installed topology)", None, shared.plan.topology, shared))
    return found


def _check_current(name: str, layout: Any, topology: Any, holder: Any, where: str) -> None:
    """Refuse a module whose layout or topology changed since its build (it runs the old plan)."""
    from canvas_core.errors import SchemaError
    from canvas_core.schema.staleness import check_topology_unchanged, check_unchanged

    stamps, plan = getattr(holder, "__dict__", {}), getattr(holder, "plan", None)
    layout = getattr(plan, "layout", None) if layout is None else layout
    try:
        check_unchanged(layout, stamps.get("_layout_stamp"), type(holder).__name__)
        if topology is not None:  # (an installed one: install it again)
            check_topology_unchanged(topology, stamps.get("_topology_stamp"), type(holder).__name__,
                                     None if isinstance(holder, nn.Module) else "install the changed topology again")
    except SchemaError as exc:
        raise CheckpointError(f"{where}: the model's module {name!r} is out of date: {exc}") from None


def _check_model_matches(model: nn.Module, schema: Any, where: str) -> None:
    """Refuse a model whose canvas modules were built from another layout / topology, or changed since."""
    from canvas_core.schema import CanvasSchema

    want = schema.to_dict()
    for name, layout, topology, holder in _canvas_parts(model):
        _check_current(name, layout, topology, holder, where)
        if layout is None:  # a topology installed in a backbone: compare the topology only
            _check_installed(name, topology, schema, where)
            continue
        got = CanvasSchema(layout=layout, topology=topology).to_dict()
        if topology is None:  # a canvas module without a topology: compare the layout only
            got.pop("topology", None)
            ref = {k: v for k, v in want.items() if k != "topology"}
        else:
            ref = want
        diffs = schema_differences(got, ref, f"module {name!r}", "the schema")
        if diffs:
            raise CheckpointError(
                f"{where}: the model's module {name!r} was built from another canvas than the schema "
                "given: " + "; ".join(diffs[:6])
                + ". Pass the schema the model was built from"
            )


def _check_installed(name: str, topology: Any, schema: Any, where: str) -> None:
    got, want = list(topology.connections), list(schema.topology.connections if schema.topology else [])
    if got == want:
        return
    i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    got_i, want_i = (c[i].describe() if i < len(c) else "none" for c in (got, want))
    raise CheckpointError(
        f"{where}: the topology installed in the model ({name}) is not the schema's: {len(got)} connections "
        f"installed, {len(want)} in the schema; connection #{i}: installed {got_i}, schema {want_i}. Pass "
        "the schema whose topology is installed, or install the schema's topology")


def _state(model: nn.Module, where: str) -> Dict[str, torch.Tensor]:
    state = model.state_dict()
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{where}: state_dict entries {bad[:5]} are not tensors (extra state of type "
            f"{type(state[bad[0]]).__name__}); a safetensors checkpoint holds tensors only"
        )
    return state


def _check_model(model: Any, where: str) -> None:
    if not isinstance(model, nn.Module):
        raise CanvasTypeError(f"{where} expects a torch nn.Module, got {type(model).__name__}")


def _file_names(model: nn.Module, keys: Any, where: str) -> Dict[str, str]:
    """``{the model's own state name: the name in a file}``: the plain model's names, without the
    segments of the wrappers around or inside ``model`` (``torch.compile``, DDP, sequence
    parallelism: :mod:`canvas_core.runtime.compiled_names`)."""
    names = plain_names(model, keys)
    owner: Dict[str, str] = {}
    for own, plain in names.items():
        if plain in owner:
            raise CheckpointError(
                f"{where}: the model's tensors {owner[plain]!r} and {own!r} both read {plain!r} once the "
                "names of wrappers (torch.compile's _orig_mod, DDP's module, a sequence-parallel layer's attn) "
                "are dropped; rename one of the modules")
        owner[plain] = own
    return names


def save_canvas_checkpoint(model: nn.Module, path: Any, schema: Any, *, metadata: Optional[Mapping[str, Any]] = None) -> str:
    """Save ``model.state_dict()`` with ``schema`` (its JSON and hash) to ``path`` (safetensors).

    ``schema``: the ``CanvasSchema`` the model was built from (a ``CanvasLayout`` or an object with
    ``.schema`` also works); refused when the model's canvas modules were built from another one.
    ``metadata``: JSON-serialisable dict stored as ``user_metadata`` (step, loss, ...).
    Non-finite tensors and non-regular targets are refused before the file is touched; the write
    is atomic.  Returns the real path written.

    Tensor names are the plain model's: a model wrapped by ``torch.compile``,
    ``DistributedDataParallel`` or ``parallelize_canvas`` writes the file its unwrapped model
    writes (and ``model_class`` names the wrapped model's class).  A model whose tensors are
    sharded ``DTensor`` s (FSDP2's ``fully_shard``) is gathered whole, a collective: call this on
    **every** rank (see :mod:`canvas_core.checkpoints.sharded`); each rank writes the whole model
    to its ``path`` (the same path on every rank is fine: each write is atomic)."""
    from canvas_core.checkpoints.sharded import agree_before_gather, gather_full

    where = "save_canvas_checkpoint"
    _check_model(model, where)
    state = _state(model, where)
    regions, binders = conditioner_names(model), binder_configs(model)
    sharded = any(is_dtensor(v) for v in state.values())
    failure: Optional[BaseException] = None
    try:  # this rank's own checks; with sharded tensors every rank learns the outcome before gathering
        s = _as_schema(schema, where)
        check_write_target(path, "the canvas checkpoint", error=CheckpointError)
        check_utf8_path(os.fspath(path), "cannot save the canvas checkpoint to")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise CheckpointError(f"{where}: metadata must be a dict of JSON-serialisable values, got {type(metadata).__name__}")
        user = metadata_json(metadata or {}, where)
        _check_model_matches(model, s, where)
        names = _file_names(model, state, where)
        if sharded:  # this rank's shards: NaN or the meta device are refused on every rank alike
            refuse_non_finite({k: v.to_local() if is_dtensor(v) else v for k, v in state.items()},
                              "the canvas checkpoint")
    except Exception as exc:
        if not sharded:
            raise
        failure = exc
    if sharded:
        agree_before_gather(state, where, failure)
        state = gather_full(state)
    import canvas_core

    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "canvas_core_version": canvas_core.__version__,
        "torch_version": torch.__version__,
        "model_class": model_class_name(unwrap_model(model)),
        "schema": json.dumps(s.to_dict()),  # region order kept: it fixes the packing
        "schema_hash": s.schema_hash(),
        "user_metadata": user,
        **({REGIONS: json.dumps(regions)} if regions else {}),
        **({BINDERS: json.dumps(binders)} if binders else {}),
        **header_record(region_key_owners(model, names)),  # the owner of each order-dependent key
    }
    return save_safetensors_atomic({names[k]: v for k, v in state.items()}, path, header, "the canvas checkpoint")


def _open(path: Any, where: str) -> Tuple[str, Dict[str, str], Any]:
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise CanvasTypeError(f"{where}: path must be a file path (str or os.PathLike), got {path!r:.60}")
    p = os.fspath(path)
    check_readable_file(p, "canvas checkpoint")
    check_utf8_path(p, "canvas checkpoint")
    from safetensors import SafetensorError, safe_open

    try:
        fh = safe_open(p, framework="pt", device="cpu")
        header = dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        with open(p, "rb") as raw:
            head = raw.read(8)
        if pickled(head):
            raise CheckpointError(
                f"{p!r} is a pickle / torch.save file, and canvas-core never unpickles checkpoints; "
                "save the model with save_canvas_checkpoint") from None
        other = not_safetensors(p)
        if other:
            raise CheckpointError(f"{p!r} is not a canvas checkpoint, nor any safetensors file: {other}; give the "
                                  ".safetensors file save_canvas_checkpoint wrote") from None
        raise CheckpointError(f"{p!r} is not a readable safetensors canvas checkpoint{truncation(p)}: {exc}") from None
    twice = duplicate_names(p)
    if twice:
        raise CheckpointError(f"{p!r} is a corrupt checkpoint: {twice}, so it is unclear which one was meant; "
                              "save the model again with save_canvas_checkpoint (the file was edited by hand or "
                              "written by another tool)")
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"{p!r} is not a canvas-core canvas checkpoint (format {header.get('format')!r}); save one "
            "with save_canvas_checkpoint" + (" (this is a loop checkpoint: use load_loop_checkpoint)"
                                             if header.get("format") == "canvas-core/loop-checkpoint" else ""))
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{p!r} has canvas-checkpoint format version {header.get('format_version')!r}; this canvas-core "
            f"reads version {FORMAT_VERSION}")
    return p, header, fh


def _saved_schema(p: str, header: Mapping[str, str]) -> Tuple[Dict[str, Any], Any, Dict[str, Any]]:
    """The schema a checkpoint's header stores: ``(its dict, the CanvasSchema built from it, the
    decoded user_metadata)``,
    refused with a :class:`CheckpointError` when the JSON is malformed, does not match its hash,
    or is not a canvas schema this canvas-core can read (built through ``CanvasSchema.from_dict``
    before anything compares it, so a wrong structure never reaches the comparison)."""
    from canvas_core.errors import CanvasError
    from canvas_core.schema import CanvasSchema
    from canvas_core.schema.jsonio import loads_strict

    if not str(header.get("schema", "")).strip():
        raise CheckpointError(f"{p!r} has a corrupt header: its 'schema' entry is empty; save the model again with "
                              "save_canvas_checkpoint")
    try:  # malformed JSON, numbers Python refuses to read, repeated keys: named as schema files name them
        saved = loads_strict(header.get("schema", ""), "its 'schema' entry")
    except CanvasError as exc:
        raise CheckpointError(f"{p!r} has a corrupt header: {exc}") from None
    user = read_metadata(header, p)
    if not isinstance(saved, dict):
        raise CheckpointError(f"{p!r} has a corrupt header: 'schema' is not a canvas schema")
    body = {k: v for k, v in saved.items() if k != "metadata"}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()
    if digest != header.get("schema_hash"):
        raise CheckpointError(f"{p!r} has a corrupt header: its schema does not match its schema_hash")
    try:
        built = CanvasSchema.from_dict(saved)
    except CanvasError as exc:
        raise CheckpointError(
            f"{p!r} has a corrupt header: its 'schema' entry is not a canvas schema this canvas-core reads "
            f"({exc}); the file cannot be checked against a model. Save the model again with "
            "save_canvas_checkpoint, or read it with the canvas-core version that wrote it "
            f"({header.get('canvas_core_version', 'unknown')})") from None
    return saved, built, user


def read_canvas_checkpoint_header(path: Any) -> Dict[str, Any]:
    """The header of a canvas checkpoint, with ``schema`` as a ``CanvasSchema`` and
    ``user_metadata`` decoded; reads no tensor."""
    p, header, _ = _open(path, "read_canvas_checkpoint_header")
    _, built, user = _saved_schema(p, header)
    regions = conditioner_regions(p, header)
    binders = saved_binder_configs(p, header)
    return {**header, "schema": built, "user_metadata": user, **({REGIONS: regions} if regions is not None else {}),
            **({BINDERS: binders} if binders is not None else {}), **region_key_entry(p, header)}


def _shape_hint(model: nn.Module, key: str, shape: Tuple[int, ...]) -> str:
    """``"; <hint>"`` from the closest module above ``key`` defining ``saved_state_hint(name,
    shape)`` (how to build it so the saved tensor fits, e.g. mamba's ``expand``), else ``""``."""
    parts = key.split(".")
    for i in range(len(parts) - 1, -1, -1):
        try:
            owner = model.get_submodule(".".join(parts[:i]))
        except AttributeError:
            continue
        hint = getattr(owner, "saved_state_hint", None)
        if callable(hint):
            text = hint(".".join(parts[i:]), shape)
            if text:
                return f"; {text}"
    return ""


def _names_in_file(keys: List[str], model_names: Mapping[str, str], p: str) -> Dict[str, str]:
    """``{plain name: the name in the file}`` for a file's tensor names.  Older files kept the
    segments of wrappers: ``_orig_mod`` (``torch.compile``) anywhere, or a ``module.`` before
    every name (a model saved inside ``DistributedDataParallel``); both are dropped."""
    in_file: Dict[str, str] = {}
    for k in keys:
        plain = plain_name(k)
        if plain in in_file:
            raise CheckpointError(
                f"canvas checkpoint {p!r} holds both {in_file[plain]!r} and {k!r}, which name the same tensor "
                f"{plain!r} once torch.compile's '_orig_mod.' is dropped (one saved from a compiled model, one from "
                "the plain model?); it is unclear which one to load. Keep one of them in the file (save the model "
                "again with save_canvas_checkpoint, which writes the plain names)")
        in_file[plain] = k
    ddp = "module."
    if in_file and all(k.startswith(ddp) for k in in_file):
        stripped = {k[len(ddp):]: v for k, v in in_file.items()}

        def misfit(names: Mapping[str, str]) -> int:
            return len(set(names) ^ set(model_names))

        if misfit(stripped) < misfit(in_file):  # the names fit (better) without DDP's segment
            return stripped
    return in_file


def _refuse_unloadable(model: nn.Module, state: Mapping[str, torch.Tensor], p: str) -> None:
    """Refuse to load into tensors a copy cannot change: on the meta device ``load_state_dict``
    copies into shapes without storage (the load would seem to succeed and load nothing), and
    outside ``torch.inference_mode`` torch refuses every in-place change of tensors made under it
    (after ``load_state_dict`` changed the others)."""
    plain = plain_names(model, state)
    checks = [(lambda v: v.is_meta,
               "are on the meta device (shapes without storage: a model built under torch.device('meta') or "
               "init_empty_weights), where a copy does nothing. Give them storage first, e.g. "
               "model.to_empty(device='cpu'), then load: the checkpoint fills every saved tensor")]
    if not torch.is_inference_mode_enabled():
        checks.append((lambda v: not is_dtensor(v) and v.is_inference(),
                       "were made under torch.inference_mode() (inference tensors), which torch lets no one "
                       "change outside it. Load inside `with torch.inference_mode():`, or build the model "
                       "outside inference mode to train it"))
    for bad, why in checks:
        hit = [plain[k] for k, v in state.items() if not is_uninitialized(v) and bad(v)]
        if hit:
            more = f" and {len(hit) - 5} more" if len(hit) > 5 else ""
            raise CheckpointError(f"cannot load canvas checkpoint {p!r} into {model_class_name(unwrap_model(model))}: "
                                  f"its tensor(s) {hit[:5]}{more} {why}")


def _checked_tensors(model: nn.Module, path: Any, schema: Any, where: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Every check of :func:`load_canvas_checkpoint` that needs no other rank: ``({the model's own
    state name: the tensor to load (this rank's shards for a DTensor)}, the file's header with
    ``user_metadata`` decoded)``.
    Changes nothing."""
    s = _as_schema(schema, where)
    p, header, fh = _open(path, where)
    saved, built, user = _saved_schema(p, header)
    regions, binders = conditioner_regions(p, header), saved_binder_configs(p, header)
    if header.get("schema_hash") != s.schema_hash():
        diffs = schema_differences(saved, s.to_dict())
        raise CheckpointError(
            f"canvas checkpoint {p!r} was saved for another canvas schema: "
            + ("; ".join(diffs[:8]) if diffs else "the schemas differ") + ". Load it into a model built "
            "from the schema it was saved with (read_canvas_checkpoint_header(path)['schema'])")
    _check_model_matches(model, s, where)
    check_binder_configs(model, binders, p)
    current = _state(model, where)
    _refuse_unloadable(model, current, p)
    names = {plain: own for own, plain in _file_names(model, current, where).items()}  # file name -> own
    in_file = remap_file_names(model, names, _names_in_file(list(fh.keys()), names, p), header,
                               list(built.layout.regions), p)
    missing, unexpected = sorted(set(names) - set(in_file)), sorted(set(in_file) - set(names))
    if missing or unexpected:
        raise CheckpointError(
            f"canvas checkpoint {p!r} does not fit {model_class_name(unwrap_model(model))}: "
            + (f"missing tensors {missing[:5]}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected tensors {unexpected[:5]}" if unexpected else "")
            + "; the file belongs to another model class")
    check_conditioner_regions(model, regions, p)
    tensors = {}
    for name, k in names.items():
        ref, t = current[k], fh.get_tensor(in_file[name])
        lazy = is_uninitialized(ref)  # a lazy module's: load_state_dict gives it the saved shape
        if not lazy and not is_dtensor(ref) and any(st == 0 and n > 1 for st, n in zip(ref.stride(), ref.shape)):
            raise CheckpointError(  # load_state_dict would fail on it half-way, the tensors before it loaded
                f"cannot load canvas checkpoint {p!r} into {model_class_name(unwrap_model(model))}: its tensor "
                f"{name!r} {tuple(ref.shape)} is an expanded view (stride 0: its elements share memory), which "
                "cannot be written in place; register a tensor of its own instead (.clone() of the expanded "
                "one), then load")
        if not lazy and tuple(t.shape) != tuple(ref.shape):
            raise CheckpointError(
                f"canvas checkpoint {p!r}: tensor {name!r} has shape {tuple(t.shape)} but the model's is "
                f"{tuple(ref.shape)}" + _shape_hint(model, k, tuple(t.shape)))
        unfit = unfit_dtype(t, torch.empty(0, dtype=ref.dtype) if lazy else ref)  # a lazy one has no data
        if unfit:
            raise CheckpointError(f"canvas checkpoint {p!r}: tensor {name!r} {unfit}")
        tensors[k] = loaded_value(t, ref.dtype, name, f"canvas checkpoint {p!r}")  # cast, then checked
    refuse_differing_ties([(name, current[k], tensors[k]) for name, k in names.items()], f"canvas checkpoint {p!r}")
    for k, t in tensors.items():  # a sharded model (FSDP2): this rank's shards, cut locally
        if is_dtensor(current[k]):
            tensors[k] = shard_like(t, current[k], where, k)
    return tensors, {**header, "user_metadata": user, **({REGIONS: regions} if regions is not None else {}),
                     **({BINDERS: binders} if binders is not None else {}), **region_key_entry(p, header)}


def load_canvas_checkpoint(model: nn.Module, path: Any, schema: Any) -> Dict[str, Any]:
    """Load a :func:`save_canvas_checkpoint` file into ``model`` (in place) and return its header.

    ``schema``: the ``CanvasSchema`` ``model`` was built from.  Refused with a
    :class:`CheckpointError` naming what differs, and ``model`` left unchanged, when the file was
    saved for another schema, when ``model``'s canvas modules were built from another layout or
    topology than ``schema``, when the tensors do not fit (missing / unexpected names, shapes,
    non-finite values), or when ``model``'s tensors are on the meta device (a copy into them does
    nothing: ``model.to_empty(device=...)`` first).

    Names are matched as the plain model has them, so a file loads into the model whether or not
    either was wrapped (``torch.compile``, ``DistributedDataParallel``, ``parallelize_canvas``).
    Into a model whose tensors are sharded ``DTensor`` s (FSDP2's ``fully_shard``) each rank loads
    its own shards of the whole tensors: call it on every rank.  The ranks meet first (through the
    process group's store, see :mod:`canvas_core.checkpoints.sharded`), so a file refused on one
    rank is refused on every rank, and no rank changes its shards unless every rank can."""
    from canvas_core.checkpoints.sharded import agree_before_gather

    where = "load_canvas_checkpoint"
    _check_model(model, where)
    raw = model.state_dict()
    sharded = any(is_dtensor(v) for v in raw.values())
    failure: Optional[BaseException] = None
    tensors: Dict[str, Any] = {}
    header: Dict[str, Any] = {}
    try:  # this rank's own checks; with sharded tensors every rank learns the outcome before loading
        tensors, header = _checked_tensors(model, path, schema, where)
    except Exception as exc:
        if not sharded:
            raise
        failure = exc
    if sharded:
        agree_before_gather(raw, where, failure, action="load")
    model.load_state_dict(tensors, strict=True)
    return header
