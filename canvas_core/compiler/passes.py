"""The steps of ``ProgramCompiler.compile`` that are not lowering or resolution.

* :func:`region_modes` reads every region's compile mode and :class:`ModeWork` writes down what
  those modes ask of a module; :mod:`canvas_core.runtime.modes` carries it out when a module is
  given (the compiler itself never touches torch);
* :func:`reduced_schema` drops eliminated regions and connections;
* :func:`apply_cortex` gives intra-zone connections their zone's type and tiling;
* :func:`resolve_identity` looks up each active region's identity binder;
* :func:`lower_schema` and :func:`dtype_name` are the small glue around them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set

from canvas_core.compiler.lowering import lower
from canvas_core.devices import normalize_dtype
from canvas_core.errors import CanvasTypeError, CompileError, UnavailableError, UnknownNameError, did_you_mean
from canvas_core.plugins import get_spec
from canvas_core.program.cortex import CortexRegistry
from canvas_core.schema import CanvasSchema, CanvasTopology
from canvas_core.schema.limits import check_bytes

__all__ = ["MODES", "EXPORT_FORMAT", "ModeWork", "region_modes", "dtype_name", "reduced_schema", "apply_cortex",
           "resolve_identity", "lower_schema", "check_slot_bank"]

#: compile modes a region may declare, from "runs and trains" to "leaves the forward pass"
MODES = ("runtime", "freeze", "constant", "export")
#: ``format`` field of exported region files (bump when the header changes).
EXPORT_FORMAT = "canvas-core/region-export/1"


@dataclass(frozen=True)
class ModeWork:
    """What a compile asks of a module, without the module: the input of
    :class:`canvas_core.runtime.modes.ModeApplier`.

    Attributes:
        modes: region -> compile mode, every region of the source layout in declaration order.
        export_dir: where exported regions go (None: ``./canvas_exports``).
        header: the fields every export file carries (format, schema hash, program version);
            the runtime adds the library versions and the region's name.
    """

    modes: Dict[str, str]
    export_dir: Optional[str] = None
    header: Dict[str, str] = field(default_factory=dict)

    def regions_in(self, mode: str) -> Set[str]:
        return {n for n, m in self.modes.items() if m == mode}


def region_modes(program: Any) -> Dict[str, str]:
    """Region name -> compile mode, in layout order (a region without a program is ``"runtime"``)."""
    modes: Dict[str, str] = {}
    for name in program.schema.layout.regions:
        rp = program.regions.get(name)
        # effective_compile_mode: an explicit learning.compile_mode wins (canvas-engineering's rule)
        mode = "runtime" if rp is None else getattr(rp, "effective_compile_mode", getattr(rp, "compile_mode", "runtime"))
        if mode not in MODES:
            raise CompileError(
                f"region {name!r} has unknown compile_mode {mode!r}.{did_you_mean(str(mode), MODES)} "
                f"Use one of {list(MODES)}")
        modes[name] = mode
    return modes


#: the spellings compile accepts for its four dtypes (case-sensitive), named by normalize_dtype
_COMPILE_DTYPES = ("float32", "float16", "bfloat16", "float64", "float", "half", "double", "fp32", "fp16", "bf16")


def dtype_name(dtype: Any) -> str:
    """``"float32"``, ``"float16"``, ``"bfloat16"`` or ``"float64"`` for a dtype or its alias."""
    name = str(dtype).replace("torch.", "").strip()
    if name not in _COMPILE_DTYPES:
        raise CompileError(f"compile dtype {dtype!r} is not supported; use float32, float16, bfloat16 or float64")
    return normalize_dtype(name)  # the devices module's one alias table


def reduced_schema(schema: Any, active: Set[str], connections: List[Any]) -> Any:
    """``schema`` with only the ``active`` regions and the given connections."""
    layout = schema.layout
    regions = {n: s for n, s in layout.regions.items() if n in active}
    new_layout = dataclasses.replace(layout, regions=regions)
    topology = None if schema.topology is None else CanvasTopology(connections=list(connections))
    return CanvasSchema(layout=new_layout, topology=topology, version=schema.version,
                        metadata=dict(schema.metadata))


def lower_schema(schema: Any) -> Any:
    """The :class:`~canvas_core.compiler.plan.ExecutionPlan` of a schema (no topology: empty plan)."""
    topology = schema.topology if schema.topology is not None else CanvasTopology(connections=[])
    return lower(topology, schema.layout)


def apply_cortex(registry: Any, connections: List[Any]) -> List[Any]:
    """Connections inside one zone of ``registry`` that set no ``fn`` / ``mask`` take the zone's."""
    if not isinstance(registry, CortexRegistry):
        raise CanvasTypeError(f"ProgramCompiler.compile: cortex must be a CortexRegistry, got {type(registry).__name__}")
    out = []
    for c in connections:
        if registry.same_cortex(c.src, c.dst):
            c = dataclasses.replace(c, fn=registry.resolve_fn(c, c.fn), mask=registry.mask_for(c))
        out.append(c)
    return out


def resolve_identity(program: Any, schema: Any, active: Set[str]) -> Dict[str, Dict[str, Any]]:
    """The binder of every active region that declares an ``IdentitySpec``, in layout order.

    Raises ``UnknownNameError`` (naming the region) for a binder nobody registered and
    ``UnavailableError`` when the binder's plugin lacks a package it needs.
    """
    region_programs = getattr(program, "regions", None) or {}
    out: Dict[str, Dict[str, Any]] = {}
    for name in schema.layout.regions:
        spec = getattr(region_programs.get(name), "identity", None)
        if spec is None or name not in active:
            continue
        where = f"region {name!r}: IdentitySpec(binding_fn={spec.binding_fn!r})"
        try:
            binder = get_spec("identity", spec.binding_fn)
        except UnknownNameError as exc:
            raise UnknownNameError(f"{where}: {exc}") from exc
        missing = binder.missing_requirements()
        if missing:
            raise UnavailableError(f"{where}: binder {binder.name!r} ({binder.describe_provider()}) cannot run "
                                   f"here: {'; '.join(missing)}")
        check_slot_bank(spec.slot_capacity, getattr(schema.layout, "d_model", None),
                        f"{where[:-1]}, slot_capacity={spec.slot_capacity})")
        out[name] = {
            "mode": spec.mode, "slot_capacity": spec.slot_capacity, "birth_death": spec.birth_death,
            "binding_fn": spec.binding_fn, "implementation": binder.factory_path,
            "provider": f"{binder.provider} {binder.version}".strip(),
        }
    return out


def check_slot_bank(n_slots: Any, d_model: Any, what: str) -> None:
    """Refuse a binder whose ``(n_slots, d_model)`` float32 slot bank alone would exceed the byte
    limit (:func:`~canvas_core.schema.limits.check_bytes`, ``CANVAS_MAX_BYTES``): 2^20 slots x 4,096 wide is 16 GiB,
    under the element limit.  Sizes that are not ints are left to the binder's own checks."""
    if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (n_slots, d_model)):
        check_bytes(4 * n_slots * d_model, f"{what}: the binder's ({n_slots:,}, {d_model:,}) float32 slot bank",
                    "Use fewer slots (IdentitySpec.slot_capacity / n_slots) or a narrower d_model")
