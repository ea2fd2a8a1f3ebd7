""":class:`ProgramCompiler`: from a ``CanvasProgram`` to a :class:`CompiledProgram`.

What ``compile()`` does, step by step:

1. check the target (device, dtype, heads) and read each region's compile mode
   (:func:`~canvas_core.compiler.passes.region_modes`);
2. sort the regions: ``freeze`` regions keep running without gradients, ``constant`` and
   ``export`` regions leave the forward pass, ``runtime`` regions are untouched;
3. drop every connection that has an end in a region that left (dead elimination), then, with a
   ``CortexRegistry``, give intra-zone connections their zone's type and tiling;
4. lower what is left to an :class:`~canvas_core.compiler.plan.ExecutionPlan`
   (:func:`~canvas_core.compiler.lowering.lower`: each connection's fn type is read here, once);
5. resolve each fn group of the plan on the target
   (:func:`~canvas_core.compiler.resolution.resolve_plan`: one registry lookup per type, the
   answer stored on the group) and each identity binder;
6. only when all of that succeeded and a module was given: apply the modes to the module
   (:class:`canvas_core.runtime.modes.ModeApplier`), so a failing compile changes nothing.

The compiler is torch-free.  Step 6 is this module's one call into the runtime layer
(:func:`_mode_applier`, used only when the caller handed ``compile`` a module); it is listed in
``ALLOWED_UPWARD`` of the import-graph test.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Optional

from canvas_core.compiler.compiled import CompiledProgram
from canvas_core.compiler.passes import (
    EXPORT_FORMAT,
    ModeWork,
    apply_cortex,
    dtype_name,
    lower_schema,
    reduced_schema,
    region_modes,
    resolve_identity,
)
from canvas_core.compiler.resolution import resolve_plan, warn_unapplied_labels
from canvas_core.errors import CanvasTypeError, CompileError, did_you_mean
from canvas_core.devices import KNOWN_DEVICE_TYPES, cuda_device_count, device_missing
from canvas_core.program import CanvasProgram
from canvas_core.program.cortex import check_cortex_layout
from canvas_core.schema import CanvasSchema

__all__ = ["ProgramCompiler", "CompiledProgram", "EXPORT_FORMAT"]

def _device_name(device: Any) -> str:
    name = str(device).strip()
    if not name or not re.match(r"^[a-z_]+(:\d+)?$", name):
        raise CompileError(f"compile device {device!r} is not a device name; use 'cpu', 'cuda', 'cuda:1', ...")
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
    """CUDA devices present (0 without CUDA, or while the process has not loaded torch: then any
    ``cuda:N`` may be compiled for)."""
    return cuda_device_count()


def _mode_applier(module: Any, work: ModeWork) -> Any:
    """The runtime's :class:`~canvas_core.runtime.modes.ModeApplier` for ``module`` (it checks the
    module's entries now and changes the module only when asked to ``apply``)."""
    from canvas_core.runtime.modes import ModeApplier  # listed in ALLOWED_UPWARD (import-graph test)

    return ModeApplier(module, work)


class ProgramCompiler:
    """Compiles a ``CanvasProgram`` for a target; the steps are listed in the module docstring.

    Usage::

        compiled = ProgramCompiler(program).compile(device="cpu")
        print(compiled)        # regions with their modes, connections with their kernels

    Args:
        program: the ``CanvasProgram``; a bare ``CanvasSchema`` works too (all regions runtime).
    """

    def __init__(self, program: Any) -> None:
        if isinstance(program, CanvasSchema):
            program = CanvasProgram(schema=program)
        if not isinstance(program, CanvasProgram):
            raise CanvasTypeError(
                f"ProgramCompiler needs a CanvasProgram (or a CanvasSchema), got {type(program).__name__}")
        self.program = program

    def __repr__(self) -> str:
        from canvas_core._reprs import compiler_repr  # canvas-engineering's text

        return compiler_repr(self)

    def region_modes(self) -> Dict[str, str]:
        """Region name -> compile mode (``"runtime"`` for a region the program does not type)."""
        return region_modes(self.program)

    def compile(self, module: Any = None, export_dir: Optional[str] = None, device: Any = "cpu",
                dtype: Any = "float32", *, kernel: Optional[str] = None, n_heads: Optional[int] = None,
                requires_grad: bool = True, resolve: bool = True, lower: bool = True,
                cortex: Any = None, preview: bool = False) -> CompiledProgram:
        """Compile the program; see the module docstring for the steps.

        Args:
            module: optional ``nn.Module`` with a ``regions`` mapping (region name -> submodule or
                parameter).  Given one, the compile also changes it: freeze regions stop taking
                gradients, constant regions hold their parameters as buffers, export regions are
                saved to ``export_dir`` (safetensors plus a JSON sidecar) and stop training.
                Without one the modes are only recorded.
            export_dir: folder for exported regions (``./canvas_exports`` when None).
            device: the device to resolve kernels for (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).
            dtype: the dtype to resolve for (``"float32"``, ``"bf16"``, a ``torch.dtype``, ...).
            kernel: a kernel name to use wherever it supports the type; a kernel that cannot run
                on the target fails the compile with its reasons.
            n_heads: heads of the attention, so that kernels can check ``d_model // n_heads``.
            requires_grad: False when the program will only run inference (kernels without a
                backward pass become eligible).
            resolve: False skips resolution (the plan's groups then carry none).
            lower: False skips the plan (and therefore resolution).
            cortex: optional ``CortexRegistry``: after dead elimination, a connection between two
                regions of one zone that sets no ``fn`` gets the zone's ``local_backend``, and one
                without a ``mask`` the zone's tiling (``MaskSpec(kind="tile",
                tile_shape=zone.tile)``); the compiled schema keeps the rewritten connections.

        Raises:
            CompileError / CanvasTypeError: a bad argument, module, export folder or mode.
            UnknownNameError / UnavailableError (from the plugin layer, naming the connection):
                a fn type that nobody registered or that cannot run on the target.
        """
        program = self.program
        schema = program.schema
        warn_unapplied_labels(((f"connection program {s!r} -> {t!r}", cp.write_mode, cp.trigger)
                               for (s, t), cp in program.connections.items()), "ProgramCompiler.compile")
        for flag_name, flag_value in (("requires_grad", requires_grad), ("resolve", resolve), ("lower", lower),
                                      ("preview", preview)):
            if not isinstance(flag_value, bool):
                raise CanvasTypeError(f"ProgramCompiler.compile: {flag_name} must be True or False, got {flag_value!r}")
        if kernel is not None and (not isinstance(kernel, str) or not kernel):
            raise CanvasTypeError(f"ProgramCompiler.compile: kernel must be a kernel name (str) or None, got {kernel!r}")
        if export_dir is not None and (  # refused before anything runs
                not isinstance(export_dir, (str, os.PathLike)) or not os.fspath(export_dir)):
            raise CompileError(f"export_dir {export_dir!r} is not a directory path; pass e.g. "
                               "export_dir='exports' (None = ./canvas_exports)")
        device_s = _device_name(device)
        dtype_s = dtype_name(dtype)
        modes = self.region_modes()
        all_regions = set(schema.layout.regions)
        head_dim = None
        if n_heads is not None:
            d_model = schema.layout.d_model
            if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1 or d_model % n_heads:
                raise CompileError(f"n_heads={n_heads!r} must be a positive int dividing d_model={d_model}")
            head_dim = d_model // n_heads
        work = ModeWork(modes=modes, export_dir=export_dir, header={
            "format": EXPORT_FORMAT, "schema_hash": schema.schema_hash(),
            "program_version": str(getattr(program, "version", ""))})
        # with a module, the runtime checks its entries now and changes it at the very end
        applier = _mode_applier(module, work) if module is not None else None

        frozen = work.regions_in("freeze")
        constant = work.regions_in("constant")
        exported = work.regions_in("export")
        active = all_regions - constant - exported
        conns = list(schema.topology.connections) if schema.topology is not None else []
        active_connections = [c for c in conns if c.src in active and c.dst in active]
        if cortex is not None:
            check_cortex_layout(cortex, schema.layout, active_connections)
            active_connections = apply_cortex(cortex, active_connections)
        reduced = reduced_schema(schema, active, active_connections)

        plan = None
        if lower:
            plan = lower_schema(reduced)
            if resolve:
                plan = resolve_plan(plan, device=device_s, dtype=dtype_s, head_dim=head_dim, kernel=kernel,
                             requires_grad=requires_grad, preview=preview)
        identity = resolve_identity(program, schema, active) if resolve else {}

        constant_buffers: Dict[str, Any] = {}
        exported_paths: Dict[str, str] = {}
        if applier is not None:
            constant_buffers, exported_paths = applier.apply()

        return CompiledProgram(
            schema=reduced, active_regions=active, frozen_regions=frozen, constant_regions=constant,
            exported_memories=exported, active_connections=active_connections, all_regions=all_regions,
            constant_buffers=constant_buffers, exported_paths=exported_paths, plan=plan,
            device=device_s, dtype=dtype_s, kernel=kernel, requires_grad=bool(requires_grad),
            source_schema=schema, identity=identity, preview=preview, device_missing=device_missing(device_s),
        )
