"""Compile modes applied to a module: freezing, turning regions into constants, exporting them.

The compiler decides which region gets which mode and writes that down without torch
(:class:`~canvas_core.compiler.passes.ModeWork`).  This module does the part that touches
``nn.Module`` objects and files: ``ProgramCompiler.compile(module=...)`` hands its work list to
:class:`ModeApplier`.

The module must expose ``module.regions``, a mapping from region name to a submodule or a
parameter (``nn.ModuleDict``, ``nn.ParameterDict`` or a plain dict):

* ``freeze``: ``requires_grad_(False)`` on the region's entry;
* ``constant``: every parameter of the region becomes a buffer holding the same tensor (the
  ``state_dict`` keys stay, gradients stop); the tensors are returned for the report.  A submodule
  object that the constant region shares with a region keeping another mode (the same
  ``nn.Linear`` under two names of ``module.regions``, or inside both entries) is first replaced,
  in the constant region only, by a deep copy, so the other regions keep their parameters;
* ``export``: the region's state goes to ``<export_dir>/<region>.safetensors`` (no pickle), with
  the header both in the file's metadata and in a JSON sidecar, then the entry stops training.

Nothing is changed until every entry has been checked, and the export files are first written
under temporary names and moved in place only when all of them were written: a compile that
fails leaves the module and the export directory as they were.  Both steps are those of the
project's one writer (``canvas_core/_safe_write.py``: ``stage_write``, then ``commit``), so an
export is flushed to disk and keeps the mode of a file it replaces.
"""

from __future__ import annotations

import copy
import importlib.metadata as md
import json
import os
import re
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from canvas_core.errors import CanvasTypeError, CompileError, did_you_mean

__all__ = ["ModeApplier", "library_versions"]


def library_versions() -> Dict[str, str]:
    """Versions written into export headers: canvas_core, torch, safetensors."""
    out = {}
    try:
        import canvas_core

        out["canvas_core"] = str(getattr(canvas_core, "__version__", "unknown"))
    except Exception:  # pragma: no cover
        out["canvas_core"] = "unknown"
    out["torch"] = str(torch.__version__)
    try:
        out["safetensors"] = md.version("safetensors")
    except md.PackageNotFoundError:  # pragma: no cover
        out["safetensors"] = "unknown"
    return out


def _file_stem(region: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", region) or "region"


def _export_directory(export_dir: Optional[str]) -> str:
    """The absolute export directory, created if needed and checked to be writable."""
    if export_dir is not None and (not isinstance(export_dir, (str, os.PathLike))
                                   or not os.fspath(export_dir) or "\x00" in str(os.fspath(export_dir))):
        raise CompileError(f"export_dir {export_dir!r} is not a directory path; pass e.g. export_dir='exports' "
                           "(None = ./canvas_exports)")
    directory = os.path.abspath(os.path.expanduser(os.fspath(export_dir)) if export_dir is not None else "canvas_exports")
    existing = directory
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)  # where the missing folders would be made
    if os.path.isdir(existing):  # a read-only folder (0555) is refused for root too: nothing is made in it
        from canvas_core._safe_write import _refuse_read_only_directory

        _refuse_read_only_directory(existing, directory, "the export directory", CompileError)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise CompileError(f"export_dir {directory!r} cannot be created: {exc}; pass a writable export_dir") from None
    if not os.path.isdir(directory):
        raise CompileError(f"export_dir {directory!r} is not a directory; pass a writable export_dir")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CompileError(f"export_dir {directory!r} is not writable; pass a writable export_dir")
    return directory


class ModeApplier:
    """Checks a module against a compile's mode list, then applies it (see the module docstring).

    Args:
        module: the ``nn.Module`` given to ``ProgramCompiler.compile``.
        work: the compiler's :class:`~canvas_core.compiler.passes.ModeWork` (``modes``: region ->
            mode in declaration order, ``export_dir``, ``header``).

    Raises (at construction, before anything changes):
        CanvasTypeError: not an ``nn.Module``, no usable ``regions`` mapping, an entry that is
            neither a module nor a parameter.
        CompileError: a region with a non-runtime mode has no entry in ``module.regions``; a
            constant region whose entry is itself shared with another region when
            ``module.regions`` is not an ``nn.ModuleDict`` (its copy could not be registered).
    """

    def __init__(self, module: Any, work: Any) -> None:
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
        self.module, self.regions, self.work = module, regions, work
        for name, mode in work.modes.items():
            if mode != "runtime":
                self._entry(name, mode)
        self._untie_plan = self._plan_untie(work.modes)

    def _entry(self, name: str, mode: str) -> Any:
        if name not in self.regions:
            known = list(self.regions.keys())
            raise CompileError(
                f"region {name!r} has compile_mode={mode!r} but {type(self.module).__name__}.regions has no "
                f"entry {name!r} (entries: {known}).{did_you_mean(name, known)} Add its submodule to "
                "module.regions or change the region's compile_mode")
        entry = self.regions[name]
        if not isinstance(entry, (nn.Module, torch.Tensor)):
            raise CanvasTypeError(
                f"{type(self.module).__name__}.regions[{name!r}] must be an nn.Module or a parameter, got "
                f"{type(entry).__name__}")
        return entry

    def _plan_untie(self, modes: Mapping[str, str]) -> List[Tuple[str, Optional[nn.Module], str]]:
        """The submodule slots of constant regions that hold a module object also used by a region
        of another mode, as ``(region, parent, key)`` (``parent`` None: the entry of
        ``module.regions`` itself).  Turning such a module's parameters into buffers in place
        would take them from the other regions as well, so each slot gets its own copy."""
        users: Dict[int, List[str]] = {}  # module id -> the non-constant regions reaching it
        for name in self.regions.keys():
            entry = self.regions[name]
            if modes.get(name, "runtime") != "constant" and isinstance(entry, nn.Module):
                for mod in entry.modules():
                    users.setdefault(id(mod), []).append(name)
        plan: List[Tuple[str, Optional[nn.Module], str]] = []
        for name, mode in modes.items():
            entry = self.regions[name] if mode == "constant" else None
            if not isinstance(entry, nn.Module):
                continue
            if id(entry) in users:
                if not isinstance(self.regions, nn.ModuleDict):
                    raise CompileError(
                        f"region {name!r} has compile_mode='constant' but {type(self.module).__name__}"
                        f".regions[{name!r}] is the same {type(entry).__name__} object as the entry of "
                        f"{users[id(entry)]}, which keep learning; its untied copy cannot be registered in "
                        f"a {type(self.regions).__name__}. Make module.regions an nn.ModuleDict, give "
                        f"region {name!r} its own submodule, or give these regions the same compile_mode")
                plan.append((name, None, name))
                continue
            todo, seen = [entry], {id(entry)}
            while todo:  # walk the region's own modules down to the first shared ones
                parent = todo.pop()
                for key, child in parent._modules.items():
                    if child is None:
                        continue
                    if id(child) in users:
                        plan.append((name, parent, key))
                    elif id(child) not in seen:
                        seen.add(id(child))
                        todo.append(child)
        return plan

    def _untied_copies(self) -> List[Tuple[Optional[nn.Module], str, nn.Module]]:
        """Deep copies for the planned slots (one memo: regions sharing a module among themselves
        still share its copy).  Made before anything changes, so a copy that fails changes nothing."""
        memo: Dict[int, Any] = {}
        out: List[Tuple[Optional[nn.Module], str, nn.Module]] = []
        for name, parent, key in self._untie_plan:
            source = self.regions[key] if parent is None else parent._modules[key]
            try:
                out.append((parent, key, copy.deepcopy(source, memo)))
            except Exception as exc:
                raise CompileError(
                    f"region {name!r} has compile_mode='constant' and shares a {type(source).__name__} with "
                    f"regions that keep learning; copying it for {name!r} failed ({type(exc).__name__}: "
                    f"{exc}). Give region {name!r} its own submodule, or give these regions the same "
                    "compile_mode") from exc
        return out

    # --- applying -----------------------------------------------------------------------------
    def apply(self) -> Tuple[Dict[str, Any], Dict[str, str]]:
        """Export, then freeze / make constant / detach; returns (constant tensors, export paths)."""
        modes = self.work.modes
        self._warn_shared(modes)
        copies = self._untied_copies()
        exported_paths = self._export([n for n, m in modes.items() if m == "export"])
        for parent, key, twin in copies:
            if parent is None:
                self.regions[key] = twin
            else:
                parent._modules[key] = twin
        constant_buffers: Dict[str, Any] = {}
        for name, mode in modes.items():
            if mode == "freeze":
                self._entry(name, mode).requires_grad_(False)
            elif mode == "constant":
                constant_buffers[name] = self._make_constant(name)
            elif mode == "export":
                self._entry(name, mode).requires_grad_(False)
        return constant_buffers, exported_paths

    def _warn_shared(self, modes: Mapping[str, str]) -> None:
        """Warn about a parameter shared by regions of different compile modes (tied weights or one
        submodule object under several names): a frozen one stops the other region learning too, a
        constant one is untied from it (a shared submodule object is copied, see
        :meth:`_plan_untie`)."""
        owners: Dict[int, List[str]] = {}
        for name in self.regions.keys():
            entry = self.regions[name]
            params = entry.parameters() if isinstance(entry, nn.Module) else [entry] if isinstance(entry, torch.Tensor) else []
            for p in params:
                owners.setdefault(id(p), []).append(name)
        for names in owners.values():
            kinds = {modes.get(n, "runtime") for n in names}
            if len(names) > 1 and len(kinds) > 1:
                which = ", ".join(f"{n!r} ({modes.get(n, 'runtime')})" for n in names)
                warnings.warn(
                    f"a parameter is shared by regions {which}: compile modes apply to the parameter, so "
                    "'freeze' / 'export' stop every region using it from learning and 'constant' unties "
                    "the constant region's copy from the others. Give the regions the same mode, or untie "
                    "the weights", UserWarning, stacklevel=4)
                return

    def _non_constant_params(self) -> set:
        """The ids of the parameters that regions of a mode other than ``constant`` reach."""
        ids = set()
        for other in self.regions.keys():
            if self.work.modes.get(other, "runtime") == "constant":
                continue
            entry = self.regions[other]
            params = entry.parameters() if isinstance(entry, nn.Module) else [entry] if isinstance(entry, torch.Tensor) else []
            ids.update(id(p) for p in params)
        return ids

    def _make_constant(self, name: str) -> Any:
        """Every parameter of the region re-registered as a buffer with the same values (a copy for
        a parameter tied to a region of another mode, so that its training leaves them as they are)."""
        entry = self._entry(name, "constant")
        stats = [type(m).__name__ for m in (entry.modules() if isinstance(entry, nn.Module) else ())
                 if getattr(m, "track_running_stats", False) and getattr(m, "running_mean", None) is not None]
        if stats:
            warnings.warn(
                f"constant region {name!r} holds {stats[0]} with running statistics: in training mode it still "
                "normalises with batch statistics and updates them, so the region is not constant. Put that "
                f"submodule in eval() (module.regions[{name!r}].eval(), again after every model.train()) or "
                "build it with track_running_stats=False", UserWarning, stacklevel=4)
        learning = self._non_constant_params()
        frozen: Dict[int, torch.Tensor] = {}  # one buffer per parameter: ties inside the region stay

        def as_buffer(p: torch.Tensor) -> torch.Tensor:
            # a parameter tied to a region of another mode is copied: a buffer sharing its storage
            # would follow every optimizer step of that region
            if id(p) not in frozen:
                frozen[id(p)] = p.detach().clone() if id(p) in learning else p.detach()
            return frozen[id(p)]

        if isinstance(entry, nn.Module):
            for mod in entry.modules():
                for p_name, p in list(mod._parameters.items()):
                    if p is None:
                        continue
                    del mod._parameters[p_name]
                    mod.register_buffer(p_name, as_buffer(p), persistent=True)
            # converted parameters and the buffers it already had: all of it is constant now
            # (a second compile of the same module reports the same tensors)
            return dict(entry.named_buffers())
        owner = self.regions  # the entry is itself a parameter of the container
        buf = as_buffer(entry)
        if isinstance(owner, nn.Module) and name in owner._parameters:
            del owner._parameters[name]
            owner.register_buffer(name, buf, persistent=True)
        elif isinstance(owner, dict):
            owner[name] = buf
        else:  # pragma: no cover - an unusual container
            raise CompileError(f"cannot turn region {name!r} of {type(owner).__name__} into a buffer")
        return buf

    def _export(self, names: List[str]) -> Dict[str, str]:
        if not names:
            return {}
        directory = _export_directory(self.work.export_dir)
        header_base = dict(self.work.header)
        header_base.update({f"version_{k}": v for k, v in library_versions().items()})
        paths: Dict[str, str] = {}
        staged: Dict[str, List[Any]] = {}
        used: set = set()
        try:
            for name in names:  # declaration order, so file names are deterministic
                stem = _file_stem(name)
                k = 1
                while stem.lower() in used:  # two names that sanitize alike keep separate files
                    k += 1
                    stem = f"{_file_stem(name)}-{k}"
                used.add(stem.lower())
                path = os.path.join(directory, f"{stem}.safetensors")
                staged[name] = self._write_staged(name, path, {**header_base, "region": name})
                paths[name] = path
        except BaseException:
            for files in staged.values():
                for f in files:
                    f.discard()
            raise
        _move_in_place(staged)
        return paths

    def _write_staged(self, name: str, path: str, header: Dict[str, str]) -> List[Any]:
        """Write the region's tensors and the JSON sidecar next to ``path`` through the safe writer
        (``canvas_core/_safe_write.py``: flushed to disk, with the mode of the file they replace),
        staged: nothing replaces a target until :func:`_move_in_place`."""
        from canvas_core._safe_write import check_write_target, stage_write
        from canvas_core.checkpoints.tensors import refuse_non_finite

        entry = self._entry(name, "export")
        state = entry.state_dict() if isinstance(entry, nn.Module) else {"weight": entry}
        # own copies on the CPU: safetensors refuses shared storage, and the file stands alone
        meta = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_meta]
        if meta:
            raise CompileError(f"cannot export region {name!r}: its tensor {meta[0]!r} is on the meta device (no "
                               "values to write); materialize the module first (to_empty(device=...) then "
                               "initialise or load_state_dict), or change the region's compile_mode")
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()
                   if isinstance(v, torch.Tensor)}
        json_path = path[: -len(".safetensors")] + ".json"
        what = f"the export of region {name!r}"
        for target in (path, json_path):
            if os.path.isdir(target):
                raise CompileError(f"cannot export region {name!r}: {target!r} is a directory; remove it or "
                                   "pass another export_dir")
            # a FIFO / device / read-only file is refused, never replaced
            check_write_target(target, what, error=CompileError)
        refuse_non_finite(tensors, what, error=CompileError)
        sidecar = json.dumps({**header, "file": os.path.basename(path), "tensors": sorted(tensors)}, indent=2)

        def write_tensors(tmp: str) -> None:
            from safetensors.torch import save_file

            save_file(tensors, tmp, metadata=header)

        def write_sidecar(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(sidecar)

        staged = [stage_write(path, write_tensors, what, error=CompileError)]
        try:
            staged.append(stage_write(json_path, write_sidecar, f"the JSON sidecar of region {name!r}",
                                      error=CompileError))
        except BaseException:
            staged[0].discard()
            raise
        return staged


def _move_in_place(staged: Dict[str, List[Any]]) -> None:
    """Rename every staged file over its target (``StagedWrite.commit``: atomic per file, a symlink
    is written through); on a failure the files not yet moved are removed."""
    pending = [f for files in staged.values() for f in files]
    try:
        while pending:
            pending[0].commit()
            pending.pop(0)
    finally:
        for f in pending:
            f.discard()
