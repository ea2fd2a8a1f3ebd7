"""The ``repr`` and ``summary()`` texts of the public objects, in canvas-engineering's format.

Scripts written for canvas-engineering read these strings (``connections=N``, ``regions=N``,
operator and fill-mode counts, ``↔`` for two-way links), so canvas-core prints the same text for
the same object. Each class's ``__repr__`` / ``summary`` calls the function here; keeping them
together makes the format easy to compare with canvas-engineering's in one test
(``tests/compat/test_reprs.py``). Pure Python: nothing here imports torch.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, Iterable, List

__all__ = [
    "counts", "topology_repr", "topology_summary", "program_repr", "program_summary",
    "bound_repr", "bound_field_repr", "compiler_repr", "compiled_repr", "compiled_summary",
    "accumulator_repr", "scheduler_repr", "learned_scheduler_repr", "sharpening_repr",
    "dispatcher_repr", "cortex_summary",
]


def counts(values: Iterable[Any]) -> str:
    """``"a=2, b=1"``: how often each value occurs, sorted by value."""
    return ", ".join(f"{k}={n}" for k, n in sorted(Counter(values).items()))


# --- schema / program ---------------------------------------------------------------------------
def topology_repr(topology: Any) -> str:
    return f"CanvasTopology(connections={len(topology.connections)}, regions={sorted(topology.regions)})"


def topology_summary(topology: Any, detail: bool = False) -> str:
    """One line per linked region pair (largest weight; ``↺`` self, ``↔`` linked both ways,
    ``→`` one way), then the temporal constraints by fill mode and the operators by name.
    ``detail=True`` appends one line per connection with its offsets, fill, fn and operator."""
    conns = list(topology.connections)
    lines = [f"CanvasTopology ({len(conns)} ops, {len(topology.regions)} regions):"]
    pairs: Dict[tuple, float] = {}
    for c in conns:
        pairs[(c.src, c.dst)] = max(pairs.get((c.src, c.dst), 0.0), c.weight)
    for (src, dst), w in sorted(pairs.items()):
        if src == dst:
            lines.append(f"  {src} ↺ self  (w={w:.2f})")
        else:
            lines.append(f"  {src} {'↔' if (dst, src) in pairs else '→'} {dst}  (w={w:.2f})")
    timed = [c for c in conns if c.t_src is not None or c.t_dst is not None]
    if timed:
        lines.append(f"  [{len(timed)} temporal constraints: {counts(c.temporal_fill.value for c in timed)}]")
    ops = [c.operator for c in conns if c.operator != "attend"]
    if ops:
        lines.append(f"  [operators: {counts(ops)}]")
    if detail:
        lines.append("  connections:")
        for c in conns:
            arrow = "↺ self" if c.src == c.dst else f"→ {c.dst}"
            extra = [c.fn] if c.fn else []
            if c.t_src is not None or c.t_dst is not None:
                extra.append(f"t_src={c.t_src}, t_dst={c.t_dst}, fill={c.temporal_fill.value}")
            if c.operator != "attend":
                extra.append(c.operator)
            tail = f"  [{'; '.join(extra)}]" if extra else ""
            lines.append(f"    {c.src} {arrow}  (w={c.weight:.2f}){tail}")
    return "\n".join(lines)


def program_repr(program: Any) -> str:
    return (f"CanvasProgram(regions={len(program.regions)}, connections={len(program.connections)}, "
            f"version={program.version!r})")


def program_summary(program: Any) -> List[str]:
    """The counting lines of a program summary (header, families, non-default carriers,
    compile modes, operators of the connection programs)."""
    rps = list(program.regions.values())
    lines = [f"CanvasProgram (v{program.version}, {len(rps)} regions programmed):"]
    if rps:
        lines.append(f"  families: {counts(rp.family for rp in rps)}")
    carriers = [rp.carrier for rp in rps if rp.carrier != "deterministic"]
    if carriers:
        lines.append(f"  non-default carriers: {counts(carriers)}")
    modes = [rp.compile_mode for rp in rps if rp.compile_mode != "runtime"]
    if modes:
        lines.append(f"  compile modes: {counts(modes)}")
    ops = [cp.operator for cp in program.connections.values() if cp.operator != "attend"]
    if ops:
        lines.append(f"  operators: {counts(ops)}")
    return lines


def bound_repr(bound: Any) -> str:
    return f"BoundSchema(fields={len(bound.field_names)}, positions={bound.layout.num_positions})"


def bound_field_repr(field: Any) -> str:
    b = field.spec.bounds
    shape = "x".join(str(b[i + 1] - b[i]) for i in range(2, len(b), 2))
    return f"BoundField({field.region_name!r}, t={b[0]}-{b[1]}, {shape})"


def cortex_summary(registry: Any) -> str:
    lines = [f"CortexRegistry({registry.n_cortices} cortices, {registry.n_assigned} assignments):"]
    for name in registry.cortex_names:
        zone = registry._cortices[name]
        regions = registry.regions_in(name)
        listed = f" [{', '.join(regions)}]" if regions else ""
        lines.append(f"  {name} (tile={zone.tile}, backend={zone.local_backend}, cache={zone.shared_cache}): "
                     f"{len(regions)} regions{listed}")
    return "\n".join(lines)


# --- compiler -----------------------------------------------------------------------------------
def compiler_repr(compiler: Any) -> str:
    return f"ProgramCompiler(regions={len(compiler.program.schema.layout.regions)})"


def compiled_repr(compiled: Any) -> str:
    return (f"CompiledProgram(active={len(compiled.active_regions)}, frozen={len(compiled.frozen_regions)}, "
            f"exported={len(compiled.exported_memories)})")


def compiled_summary(compiled: Any) -> List[str]:
    """The lines canvas-engineering prints for a compiled program (empty sets are left out)."""
    lines = ["CompiledProgram:",
             f"  active: {len(compiled.active_regions)} regions, {len(compiled.active_connections)} connections"]
    for label, regions in (("frozen", compiled.frozen_regions), ("constant", compiled.constant_regions),
                           ("exported", compiled.exported_memories)):
        if regions:
            lines.append(f"  {label}: {sorted(regions)}")
    if compiled.n_eliminated > 0:
        lines.append(f"  eliminated: {compiled.n_eliminated} regions")
    return lines


# --- runtime ------------------------------------------------------------------------------------
def accumulator_repr(acc: Any) -> str:
    return f"ResidualAccumulator(regions={len(acc.region_names)}, kinds={acc.spec.kinds}, decay={acc.spec.decay})"


def scheduler_repr(scheduler: Any, regions: Dict[str, Any]) -> str:
    clocked = sum(1 for rp in regions.values() if getattr(rp, "clock", None) is not None)
    return f"RegionScheduler(regions={len(regions)}, clocked={clocked})"


def learned_scheduler_repr(s: Any) -> str:
    return f"LearnedScheduler(n_regions={s.n_regions}, max_active={s.max_active}, temperature={s.temperature})"


def sharpening_repr(s: Any) -> str:
    return f"SharpeningSchedule({s.schedule}, beta=[{s.beta_min}, {s.beta_max}], loops={s.max_loops})"


def dispatcher_repr(fns: List[str]) -> str:
    """``fns``: the fn type of every dispatched connection."""
    return f"AttentionDispatcher({len(fns)} ops, {len(set(fns))} fn types: {counts(fns)})"
