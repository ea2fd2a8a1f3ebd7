"""`ProgramCompiler`: lower a `CanvasProgram` to a deploy-ready `CompiledProgram`.

Passes, in order (seed 002):

1. **freeze**: ``compile_mode="freeze"`` regions stay active but get no gradient
   (``requires_grad_(False)`` on the region's submodule when a module is given).
2. **constant**: ``compile_mode="constant"`` regions leave the active set; when a module is given
   their parameters are detached and re-registered as buffers holding the same values (they keep
   their ``state_dict`` keys, gradients no longer flow) and the tensors are kept in
   ``CompiledProgram.constant_buffers``.
3. **export**: ``compile_mode="export"`` regions leave the active set; when a module is given the
   region's ``state_dict`` is written as **safetensors** (never pickle) with a JSON header and a
   JSON sidecar (region, schema hash, versions), and the submodule is detached from training.
4. **dead elimination**: connections touching an inactive region are removed; the reduced schema
   keeps only active regions and connections.

Then (beyond canvas-engineering):

5. **lower**: the reduced topology becomes an :class:`~canvas_core.compiler.plan.ExecutionPlan`.
6. **resolve**: every active connection's fn type is resolved on the target device / dtype to an
   implementation and a kernel (:mod:`canvas_core.compiler.resolution`); the records fill
   ``plan.resolutions`` and the report (:mod:`canvas_core.compiler.report`).

No torch at import time: torch and safetensors are imported only to apply modes to a module.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Set

from canvas_core.errors import CanvasTypeError, CompileError, did_you_mean

__all__ = ["ProgramCompiler", "CompiledProgram", "EXPORT_FORMAT"]

#: ``format`` field of exported region files (bump when the header changes).
EXPORT_FORMAT = "canvas-core/region-export/1"
_MODES = ("runtime", "freeze", "constant", "export")


@dataclass
class CompiledProgram:
    """Deploy-ready execution plan produced by :class:`ProgramCompiler`.

    Attributes:
        schema: Potentially reduced ``CanvasSchema`` (inactive regions removed).
        active_regions: Region names still alive at deploy.
        frozen_regions: Region names with frozen parameters.
        constant_regions: Regions materialized as buffers.
        exported_memories: Region names exported to disk.
        active_connections: Connections between active regions only (topology order).
        all_regions: Every region of the program's schema.
        constant_buffers: For each constant region (when ``compile()`` was given a module), the
            materialized tensors: a ``Dict[str, Tensor]`` of the submodule's buffers keyed by
            their name inside the submodule (a single ``Tensor`` when the region entry of
            ``module.regions`` is itself a parameter).
        exported_paths: For each exported region, the safetensors file its state was written to.
        plan: the :class:`~canvas_core.compiler.plan.ExecutionPlan` of the reduced schema, with
            ``plan.resolutions`` filled (None when compiled with ``lower=False``).
        device, dtype, kernel: the compile target and the kernel preference (None = automatic).
        requires_grad: whether the target trains (False: inference-only implementations allowed).
        source_schema: the program's full schema (the report lists eliminated regions from it).
        identity: for every active region whose ``RegionProgram`` declares an ``IdentitySpec``,
            its binder as resolved through the identity registry: ``mode``, ``slot_capacity``
            (the binder's ``n_slots``), ``birth_death``, ``binding_fn``, ``implementation``
            (factory path) and ``provider`` (empty when compiled with ``resolve=False``).
    """

    schema: Any
    active_regions: Set[str] = field(default_factory=set)
    frozen_regions: Set[str] = field(default_factory=set)
    constant_regions: Set[str] = field(default_factory=set)
    exported_memories: Set[str] = field(default_factory=set)
    active_connections: List[Any] = field(default_factory=list)
    all_regions: Set[str] = field(default_factory=set)
    constant_buffers: Dict[str, Any] = field(default_factory=dict, compare=False)
    exported_paths: Dict[str, str] = field(default_factory=dict)
    plan: Any = field(default=None, compare=False)
    device: str = "cpu"
    dtype: str = "float32"
    kernel: Optional[str] = None
    requires_grad: bool = True
    source_schema: Any = field(default=None, repr=False, compare=False)
    identity: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    @property
    def n_eliminated(self) -> int:
        """Number of regions eliminated from the training graph (constant + exported)."""
        return len(self.all_regions) - len(self.active_regions)

    @property
    def resolutions(self) -> Dict[int, Any]:
        """Connection index (in ``active_connections``) -> resolution record."""
        return dict(self.plan.resolutions) if self.plan is not None else {}

    def summary(self) -> str:
        """Short multi-line summary (canvas-engineering's format)."""
        lines = [
            "CompiledProgram:",
            f"  active: {len(self.active_regions)} regions, {len(self.active_connections)} connections",
        ]
        if self.frozen_regions:
            lines.append(f"  frozen: {sorted(self.frozen_regions)}")
        if self.constant_regions:
            lines.append(f"  constant: {sorted(self.constant_regions)}")
        if self.exported_memories:
            lines.append(f"  exported: {sorted(self.exported_memories)}")
        lines.append(f"  eliminated: {self.n_eliminated} regions")
        return "\n".join(lines)

    def report(self) -> str:
        """Readable tables: per connection the resolution, per region its mode and positions."""
        from canvas_core.compiler.report import format_report

        return format_report(self)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-compatible dict of everything in :meth:`report` (tensors are summarized)."""
        from canvas_core.compiler.report import compiled_to_dict

        return compiled_to_dict(self)

    def __str__(self) -> str:
        return self.report()

    def __repr__(self) -> str:
        return (f"CompiledProgram(active={len(self.active_regions)}, frozen={len(self.frozen_regions)}, "
                f"constant={len(self.constant_regions)}, exported={len(self.exported_memories)}, "
                f"connections={len(self.active_connections)}, device={self.device!r})")


# --------------------------------------------------------------------------------------------
# helpers


def _dtype_name(dtype: Any) -> str:
    if isinstance(dtype, str):
        name = dtype.replace("torch.", "").strip()
    else:
        name = str(dtype).replace("torch.", "")
    aliases = {"float": "float32", "half": "float16", "double": "float64", "fp32": "float32",
               "fp16": "float16", "bf16": "bfloat16"}
    name = aliases.get(name, name)
    if name not in ("float32", "float16", "bfloat16", "float64"):
        raise CompileError(f"compile dtype {dtype!r} is not supported; use float32, float16, bfloat16 or float64")
    return name


def _device_name(device: Any) -> str:
    name = str(device).strip()
    if not name or not re.match(r"^[a-z_]+(:\d+)?$", name):
        raise CompileError(f"compile device {device!r} is not a device name; use 'cpu', 'cuda', 'cuda:1', ...")
    from canvas_core.plugins.spec import KNOWN_DEVICE_TYPES

    dev_type, _, index = name.partition(":")
    if dev_type not in KNOWN_DEVICE_TYPES:
        raise CompileError(f"compile device {device!r} is not a torch device type."
                           f"{did_you_mean(dev_type, KNOWN_DEVICE_TYPES)} Use 'cpu', 'cuda', 'cuda:1', 'mps', ...")
    if dev_type == "cuda" and index:
        count = _cuda_device_count()
        if count and int(index) >= count:
            raise CompileError(f"compile device {device!r}: this machine has {count} CUDA device(s) "
                               f"(cuda:0 .. cuda:{count - 1}); pick one of them")
    return name


def _cuda_device_count() -> int:
    """Visible CUDA devices (0 when torch or CUDA is unavailable: a cross-compile is allowed)."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken CUDA setup must not block a cross-compile
        return 0


def _safe_filename(region: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", region) or "region"


def _versions() -> Dict[str, str]:
    import importlib.metadata as md

    out = {}
    try:
        import canvas_core

        out["canvas_core"] = str(getattr(canvas_core, "__version__", "unknown"))
    except Exception:  # pragma: no cover
        out["canvas_core"] = "unknown"
    import torch  # only called when a module is given: torch is already imported

    out["torch"] = str(torch.__version__)
    try:
        out["safetensors"] = md.version("safetensors")
    except md.PackageNotFoundError:  # pragma: no cover
        out["safetensors"] = "unknown"
    return out


class _ModuleRegions:
    """Validated view of ``module.regions`` (``nn.ModuleDict``, ``nn.ParameterDict`` or dict)."""

    def __init__(self, module: Any) -> None:
        import torch
        from torch import nn

        if not isinstance(module, nn.Module):
            raise CanvasTypeError(
                f"ProgramCompiler.compile(module=...) needs a torch nn.Module, got {type(module).__name__}")
        if not hasattr(module, "regions"):
            raise CanvasTypeError(
                f"ProgramCompiler.compile(module=...): {type(module).__name__} has no 'regions' attribute; "
                "expose the per-region submodules as `self.regions = nn.ModuleDict({name: submodule})`")
        regions = module.regions
        if not isinstance(regions, (Mapping, nn.ModuleDict, nn.ParameterDict)):
            raise CanvasTypeError(
                f"ProgramCompiler.compile(module=...): {type(module).__name__}.regions must map region names "
                f"to submodules (nn.ModuleDict or dict), got {type(regions).__name__}")
        self.module = module
        self.regions = regions
        self._torch = torch
        self._nn = nn

    def names(self) -> List[str]:
        return list(self.regions.keys())

    def get(self, name: str, mode: str) -> Any:
        if name not in self.regions:
            known = self.names()
            raise CompileError(
                f"region {name!r} has compile_mode={mode!r} but {type(self.module).__name__}.regions has no "
                f"entry {name!r} (entries: {known}).{did_you_mean(name, known)} Add its submodule to "
                "module.regions or change the region's compile_mode")
        entry = self.regions[name]
        if not isinstance(entry, (self._nn.Module, self._torch.Tensor)):
            raise CanvasTypeError(
                f"{type(self.module).__name__}.regions[{name!r}] must be an nn.Module or a parameter, got "
                f"{type(entry).__name__}")
        return entry

    # --- modes ------------------------------------------------------------------------------
    def freeze(self, name: str) -> None:
        entry = self.get(name, "freeze")
        entry.requires_grad_(False)

    def make_constant(self, name: str) -> Any:
        """Replace every parameter of the region by a same-valued buffer; return the tensors."""
        entry = self.get(name, "constant")
        nn = self._nn
        if isinstance(entry, nn.Module):
            for mod in entry.modules():
                for p_name, p in list(mod._parameters.items()):
                    if p is None:
                        continue
                    del mod._parameters[p_name]
                    mod.register_buffer(p_name, p.detach(), persistent=True)
            # the region's whole state is now constant: converted parameters and existing buffers
            # (idempotent: compiling the same module again reports the same tensors)
            return dict(entry.named_buffers())
        # the entry itself is a parameter held by the container (e.g. nn.ParameterDict)
        owner = self.regions
        buf = entry.detach()
        if isinstance(owner, nn.Module) and name in owner._parameters:
            del owner._parameters[name]
            owner.register_buffer(name, buf, persistent=True)
        elif isinstance(owner, dict):
            owner[name] = buf
        else:  # pragma: no cover - exotic container
            raise CompileError(f"cannot turn region {name!r} of {type(owner).__name__} into a buffer")
        return buf

    def write_export(self, name: str, path: str, header: Dict[str, str]) -> List[str]:
        """Write the region's state as safetensors (+ JSON sidecar) to temporary files next to
        ``path``; return ``[tmp_safetensors, tmp_json]``.  The module is not changed: the caller
        moves the files in place (:func:`_commit_exports`) and detaches the region only once every
        export of the compile succeeded."""
        from safetensors.torch import save_file

        entry = self.get(name, "export")
        if isinstance(entry, self._nn.Module):
            state = entry.state_dict()
        else:
            state = {"weight": entry}
        # clone: safetensors refuses tensors that share storage, and the file must be self-contained
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()
                   if isinstance(v, self._torch.Tensor)}
        json_path = path[: -len(".safetensors")] + ".json"
        for target in (path, json_path):
            if os.path.isdir(target):
                raise CompileError(f"cannot export region {name!r}: {target!r} is a directory; remove it or "
                                   "pass another export_dir")
        tag = f".tmp-{os.getpid()}-{id(self):x}"
        tmp_st, tmp_js = path + tag, json_path + tag
        try:
            save_file(tensors, tmp_st, metadata=header)
            with open(tmp_js, "w", encoding="utf-8") as fh:
                json.dump({**header, "file": os.path.basename(path), "tensors": sorted(tensors)}, fh, indent=2)
        except Exception as exc:  # OSError, SafetensorError (I/O), ...: nothing may be left behind
            _remove_quietly([tmp_st, tmp_js])
            raise CompileError(f"cannot export region {name!r} to {path!r}: {exc}; pass a writable "
                               "export_dir") from None
        return [tmp_st, tmp_js]

    def detach(self, name: str) -> None:
        self.get(name, "export").requires_grad_(False)


def _remove_quietly(paths: List[str]) -> None:
    for p in paths:
        try:
            os.remove(p)
        except OSError:
            pass


def _commit_exports(staged: Dict[str, List[str]], finals: Dict[str, str]) -> None:
    """Move every staged export file to its final name (``os.replace``: atomic per file)."""
    pending = [tmp for files in staged.values() for tmp in files]
    try:
        for name, (tmp_st, tmp_js) in staged.items():
            path = finals[name]
            os.replace(tmp_st, path)
            pending.remove(tmp_st)
            os.replace(tmp_js, path[: -len(".safetensors")] + ".json")
            pending.remove(tmp_js)
    except OSError as exc:
        _remove_quietly(pending)
        raise CompileError(f"cannot export region {name!r} to {finals[name]!r}: {exc}; pass a writable "
                           "export_dir") from None


def _prepare_export_dir(export_dir: Optional[str]) -> str:
    if export_dir is not None and (not isinstance(export_dir, (str, os.PathLike))
                                   or not os.fspath(export_dir) or "\x00" in str(os.fspath(export_dir))):
        raise CompileError(f"export_dir {export_dir!r} is not a directory path; pass e.g. export_dir='exports' "
                           "(None = ./canvas_exports)")
    directory = os.path.abspath(os.fspath(export_dir) if export_dir is not None else "canvas_exports")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise CompileError(f"export_dir {directory!r} cannot be created: {exc}; pass a writable export_dir") from None
    if not os.path.isdir(directory):
        raise CompileError(f"export_dir {directory!r} is not a directory; pass a writable export_dir")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CompileError(f"export_dir {directory!r} is not writable; pass a writable export_dir")
    return directory


def _reduced_schema(schema: Any, active: Set[str], connections: List[Any]) -> Any:
    from canvas_core.schema import CanvasSchema, CanvasTopology

    layout = schema.layout
    regions = {n: s for n, s in layout.regions.items() if n in active}
    new_layout = dataclasses.replace(layout, regions=regions)
    topology = None if schema.topology is None else CanvasTopology(connections=list(connections))
    return CanvasSchema(layout=new_layout, topology=topology, version=schema.version,
                        metadata=dict(schema.metadata))


# --------------------------------------------------------------------------------------------


class ProgramCompiler:
    """Lowers a ``CanvasProgram`` to a deploy-ready :class:`CompiledProgram`.

    Compile passes applied in order:

    1. freeze: mark ``compile_mode="freeze"`` regions (no gradient)
    2. constant: mark ``compile_mode="constant"`` regions (materialize as buffer, remove from active)
    3. export: mark ``compile_mode="export"`` regions (save to disk, remove from active)
    4. dead elimination: remove connections involving inactive regions

    then lowers the reduced schema to an ``ExecutionPlan`` and resolves every active connection's
    fn type to an implementation and kernel on the target device.

    Usage::

        compiler = ProgramCompiler(program)
        compiled = compiler.compile()
        print(compiled)            # resolution report + region table

    Args:
        program: a ``CanvasProgram`` (a bare ``CanvasSchema`` is accepted: every region runtime).
    """

    def __init__(self, program: Any) -> None:
        from canvas_core.program import CanvasProgram
        from canvas_core.schema import CanvasSchema

        if isinstance(program, CanvasSchema):
            program = CanvasProgram(schema=program)
        if not isinstance(program, CanvasProgram):
            raise CanvasTypeError(
                f"ProgramCompiler needs a CanvasProgram (or a CanvasSchema), got {type(program).__name__}")
        self.program = program

    # --- mode table -------------------------------------------------------------------------
    def region_modes(self) -> Dict[str, str]:
        """Region name -> compile mode (regions without a program are ``"runtime"``)."""
        schema = self.program.schema
        modes: Dict[str, str] = {}
        for name in schema.layout.regions:
            rp = self.program.regions.get(name)
            mode = "runtime" if rp is None else getattr(rp, "compile_mode", "runtime")
            if mode not in _MODES:
                raise CompileError(
                    f"region {name!r} has unknown compile_mode {mode!r}.{did_you_mean(str(mode), _MODES)} "
                    f"Use one of {list(_MODES)}")
            modes[name] = mode
        return modes

    def compile(self, module: Any = None, export_dir: Optional[str] = None, device: Any = "cpu",
                dtype: Any = "float32", *, kernel: Optional[str] = None, n_heads: Optional[int] = None,
                requires_grad: bool = True, resolve: bool = True, lower: bool = True,
                cortex: Any = None) -> CompiledProgram:
        """Run all compile passes and return a :class:`CompiledProgram`.

        Args:
            module: Optional runtime ``nn.Module`` whose parameters are organized by region: it
                must expose ``regions`` mapping region names to submodules (``nn.ModuleDict`` or
                dict). When given, frozen regions get ``requires_grad_(False)``; constant regions
                have their parameters detached and re-registered as same-valued buffers; exported
                regions are written to ``export_dir`` as safetensors (+ JSON sidecar) and
                detached. When None the modes are only recorded.
            export_dir: Directory for exported regions (default ``./canvas_exports`` when a module
                is given and a region is exported).
            device: Target device of the resolution pass (``"cpu"``, ``"cuda"``, ...).
            dtype: Target dtype (``"float32"``, ``"bfloat16"``, a ``torch.dtype``, ...).
            kernel: Prefer this attention kernel (e.g. ``"flex"``) for every connection whose
                type it supports; if it cannot run here the compile fails saying why.
            n_heads: Attention heads (gives ``head_dim = d_model // n_heads`` to capability
                checks); None leaves the head dim unchecked.
            requires_grad: Whether the compiled program will be trained (implementations without
                a backward pass are rejected when True); False for inference-only deploys.
            resolve: Run the resolution pass (default True).
            lower: Build the ``ExecutionPlan`` (default True; resolution needs it).
            cortex: Optional ``CortexRegistry``. Cortex pass (after dead elimination): a
                connection between two regions of the same zone that sets no ``fn`` runs the
                zone's ``local_backend``, and one without a ``mask`` gets the zone's tiling
                (``MaskSpec(kind="tile", tile_shape=zone.tile)``). The compiled schema records
                the rewritten connections.

        Raises:
            CompileError / CanvasTypeError for a bad module, export_dir or compile mode;
            the plugin layer's ``UnknownNameError`` / ``UnavailableError`` (naming the
            connection) when a fn type cannot be resolved.
        """
        program = self.program
        schema = program.schema
        for flag_name, flag_value in (("requires_grad", requires_grad), ("resolve", resolve), ("lower", lower)):
            if not isinstance(flag_value, bool):
                raise CanvasTypeError(f"ProgramCompiler.compile: {flag_name} must be True or False, got {flag_value!r}")
        if kernel is not None and (not isinstance(kernel, str) or not kernel):
            raise CanvasTypeError(f"ProgramCompiler.compile: kernel must be a kernel name (str) or None, got {kernel!r}")
        if export_dir is not None and (  # validate before anything runs
                not isinstance(export_dir, (str, os.PathLike)) or not os.fspath(export_dir)):
            raise CompileError(f"export_dir {export_dir!r} is not a directory path; pass e.g. "
                               "export_dir='exports' (None = ./canvas_exports)")
        device_s = _device_name(device)
        dtype_s = _dtype_name(dtype)
        modes = self.region_modes()
        all_regions = set(schema.layout.regions)
        head_dim = None
        if n_heads is not None:
            d_model = schema.layout.d_model
            if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1 or d_model % n_heads:
                raise CompileError(f"n_heads={n_heads!r} must be a positive int dividing d_model={d_model}")
            head_dim = d_model // n_heads
        regions = _ModuleRegions(module) if module is not None else None
        if regions is not None:  # check every needed entry before changing anything
            for name, mode in modes.items():
                if mode != "runtime":
                    regions.get(name, mode)

        # pass 1: freeze
        frozen = {n for n, m in modes.items() if m == "freeze"}
        # pass 2: constant
        constant = {n for n, m in modes.items() if m == "constant"}
        # pass 3: export
        exported = {n for n, m in modes.items() if m == "export"}
        active = all_regions - constant - exported
        # pass 4: dead elimination
        conns = list(schema.topology.connections) if schema.topology is not None else []
        active_connections = [c for c in conns if c.src in active and c.dst in active]
        # pass 5: cortex zones (local attention type and tiling for intra-zone connections)
        if cortex is not None:
            active_connections = _apply_cortex(cortex, active_connections)
        reduced = _reduced_schema(schema, active, active_connections)

        # lower + resolve before touching the module: a failing compile changes nothing
        plan = None
        if lower:
            plan = _lower(reduced)
            if resolve:
                from canvas_core.compiler.resolution import resolve_plan

                resolve_plan(plan, device=device_s, dtype=dtype_s, head_dim=head_dim, kernel=kernel,
                             requires_grad=requires_grad)

        # identity binders: each IdentitySpec's binding_fn resolved through the registry
        identity = _resolve_identity(program, schema, active) if resolve else {}

        constant_buffers: Dict[str, Any] = {}
        exported_paths: Dict[str, str] = {}
        if regions is not None:
            directory = _prepare_export_dir(export_dir) if exported else None
            header_base = {"format": EXPORT_FORMAT, "schema_hash": schema.schema_hash(),
                           "program_version": str(getattr(program, "version", ""))}
            header_base.update({f"version_{k}": v for k, v in _versions().items()})
            used: Set[str] = set()
            # exports first, staged in temporary files: a failing write leaves the module and the
            # export directory as they were (no half-applied compile)
            staged: Dict[str, List[str]] = {}
            try:
                for name in schema.layout.regions:  # declaration order: deterministic
                    if modes[name] != "export":
                        continue
                    stem = _safe_filename(name)
                    k = 1
                    while stem.lower() in used:  # two names sanitized alike: keep both files
                        k += 1
                        stem = f"{_safe_filename(name)}-{k}"
                    used.add(stem.lower())
                    path = os.path.join(directory, f"{stem}.safetensors")
                    staged[name] = regions.write_export(name, path, {**header_base, "region": name})
                    exported_paths[name] = path
            except BaseException:
                _remove_quietly([f for files in staged.values() for f in files])
                raise
            _commit_exports(staged, exported_paths)
            for name in schema.layout.regions:
                mode = modes[name]
                if mode == "freeze":
                    regions.freeze(name)
                elif mode == "constant":
                    constant_buffers[name] = regions.make_constant(name)
                elif mode == "export":
                    regions.detach(name)

        return CompiledProgram(
            schema=reduced, active_regions=active, frozen_regions=frozen, constant_regions=constant,
            exported_memories=exported, active_connections=active_connections, all_regions=all_regions,
            constant_buffers=constant_buffers, exported_paths=exported_paths, plan=plan,
            device=device_s, dtype=dtype_s, kernel=kernel, requires_grad=bool(requires_grad),
            source_schema=schema, identity=identity,
        )


def _resolve_identity(program: Any, schema: Any, active: Set[str]) -> Dict[str, Dict[str, Any]]:
    """Resolve the ``binding_fn`` of every active region's ``IdentitySpec`` (layout order).

    Raises ``UnknownNameError`` naming the region for an unregistered binder, and
    ``UnavailableError`` when its providing plugin's requirements are not installed.
    """
    region_programs = getattr(program, "regions", None) or {}
    out: Dict[str, Dict[str, Any]] = {}
    for name in schema.layout.regions:
        spec = getattr(region_programs.get(name), "identity", None)
        if spec is None or name not in active:
            continue
        from canvas_core.errors import UnavailableError, UnknownNameError
        from canvas_core.plugins import get_spec

        where = f"region {name!r}: IdentitySpec(binding_fn={spec.binding_fn!r})"
        try:
            binder = get_spec("identity", spec.binding_fn)
        except UnknownNameError as exc:
            raise UnknownNameError(f"{where}: {exc}") from exc
        missing = binder.missing_requirements()
        if missing:
            raise UnavailableError(f"{where}: binder {binder.name!r} ({binder.describe_provider()}) cannot run "
                                   f"here: {'; '.join(missing)}")
        out[name] = {
            "mode": spec.mode, "slot_capacity": spec.slot_capacity, "birth_death": spec.birth_death,
            "binding_fn": spec.binding_fn, "implementation": binder.factory_path,
            "provider": f"{binder.provider} {binder.version}".strip(),
        }
    return out


def _lower(schema: Any) -> Any:
    """The reduced schema's ``ExecutionPlan`` (kept in one place: lowering is another layer)."""
    from canvas_core.compiler.lowering import lower
    from canvas_core.schema import CanvasTopology

    topology = schema.topology if schema.topology is not None else CanvasTopology(connections=[])
    return lower(topology, schema.layout)


def _apply_cortex(registry: Any, connections: list) -> list:
    """Intra-zone connections without their own ``fn`` / ``mask`` take the zone's."""
    if not all(hasattr(registry, a) for a in ("resolve_fn", "mask_for", "same_cortex")):
        raise CanvasTypeError(f"ProgramCompiler.compile: cortex must be a CortexRegistry, got {type(registry).__name__}")
    from dataclasses import replace

    out = []
    for c in connections:
        if registry.same_cortex(c.src, c.dst):
            c = replace(c, fn=registry.resolve_fn(c, c.fn), mask=registry.mask_for(c))
        out.append(c)
    return out
