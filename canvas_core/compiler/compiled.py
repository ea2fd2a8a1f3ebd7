""":class:`CompiledProgram`: everything one run of ``ProgramCompiler.compile`` produced.

The record is plain data (sets of region names, the reduced schema, the plan and its
resolutions); the tables and the JSON form are written by :mod:`canvas_core.compiler.report`.
Torch-free: tensors only appear in ``constant_buffers`` when a module was given, and they are
only counted or summarized here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set

from canvas_core.compiler.report import compiled_to_dict, format_report

__all__ = ["CompiledProgram"]


@dataclass
class CompiledProgram:
    """The outcome of a compile: which regions survive, in which mode, and how they execute.

    Attributes:
        schema: the schema after dead elimination (eliminated regions and their connections
            are gone).
        active_regions: names of the regions that still take part in the forward pass.
        frozen_regions: names of the regions that run but receive no gradient.
        constant_regions: names of the regions whose parameters became buffers.
        exported_memories: names of the regions written to disk and taken out of the forward pass.
        active_connections: the connections left, both ends active, in topology order.
        all_regions: every region name of the source program.
        constant_buffers: per constant region, when ``compile()`` was given a module: the
            submodule's buffers by name (``Dict[str, Tensor]``), or one ``Tensor`` when the
            region's entry in ``module.regions`` is a bare parameter.
        exported_paths: per exported region, the safetensors file written.
        plan: the :class:`~canvas_core.compiler.plan.ExecutionPlan` of ``schema``; each of its
            groups carries its resolution (None when compiled with ``lower=False``).
        device, dtype, kernel: the target and the kernel asked for (None: chosen per type).
        requires_grad: False when the program was compiled for inference only.
        source_schema: the schema before elimination (the report lists every region from it).
        identity: per active region with an ``IdentitySpec``: ``mode``, ``slot_capacity``,
            ``birth_death``, ``binding_fn``, ``implementation`` (the binder's factory) and
            ``provider`` (empty when compiled with ``resolve=False``).
        preview: True when resolved as a preview for a device this machine lacks (see
            ``ProgramCompiler.compile(preview=)``); the report says so first.
        device_missing: True when this machine has no ``device`` (a ``"cuda"`` compile on a
            CPU machine); without ``preview`` the kernels are then the ones that run here, and
            the report says so first.
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
    preview: bool = False
    device_missing: bool = False

    @property
    def n_eliminated(self) -> int:
        """How many regions left the forward pass (constant plus exported)."""
        return len(self.all_regions) - len(self.active_regions)

    @property
    def resolutions(self) -> Dict[int, Any]:
        """Index in ``active_connections`` -> that connection's resolution record."""
        return dict(self.plan.resolutions) if self.plan is not None else {}

    def summary(self) -> str:
        """A few lines in canvas-engineering's layout: counts, then the regions of each mode."""
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
        if self.n_eliminated > 0:  # as canvas-engineering: only when something was eliminated
            lines.append(f"  eliminated: {self.n_eliminated} regions")
        return "\n".join(lines)

    def report(self) -> str:
        """The readable report: one table of regions, one of connections and their resolutions."""
        d = self.device
        if self.preview and self.device_missing:
            head = (f"PREVIEW for {d}: this machine has no such device. Shown is what a machine with {d} and "
                    "the packages installed here would run; to run it, compile on that machine.")
        elif self.preview:
            head = (f"PREVIEW for {d}: resolved as a machine with {d} and the packages installed here would; "
                    f"this machine has {d} too, so compiling without preview=True gives what runs here.")
        elif self.device_missing:
            head = (f"NOTE: this machine has no {d} device. The kernels below are those that can run here "
                    f"(reference fallbacks computing the same attention), not those a machine with {d} would "
                    f"use: compile with preview=True to see those, and on a machine with {d} to run them.")
        else:
            return format_report(self)
        return f"{head}\n\n{format_report(self)}"

    def to_dict(self) -> Dict[str, Any]:
        """The report as JSON-compatible data (tensors reduced to their shapes)."""
        data = compiled_to_dict(self)
        data["preview"] = self.preview
        data["device_missing"] = self.device_missing
        return data

    def __str__(self) -> str:
        return self.report()

    def __repr__(self) -> str:
        from canvas_core._reprs import compiled_repr  # canvas-engineering's text

        return compiled_repr(self)
