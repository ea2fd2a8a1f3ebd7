"""Formatting of a compiled program: the resolution table, the region table, the JSON dict.

``format_report(compiled)`` is what ``print(compiled)`` / ``compiled.report()`` show;
``format_resolutions(plan)`` is the per-connection table alone (``ExecutionPlan.summary`` lists the
same records one per line); ``compiled_to_dict(compiled)`` is the JSON form (``to_dict()``).
Pure Python.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Sequence

from canvas_core.compiler.resolved import REFERENCE_KERNEL

__all__ = ["format_table", "format_resolutions", "format_regions", "format_report", "format_plan_report",
           "format_groups", "disprove_no_gradient",
           "compiled_to_dict"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain-text table with a header rule, columns padded to their widest cell."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


def _provider(name: str, version: str) -> str:
    return f"{name} {version}".strip() if name else "-"


def format_resolutions(resolutions: Dict[int, Any]) -> str:
    """Table (connection, requested fn, implementation, kernel, provider, rejected) followed by
    the rejected candidates with their reasons (identical rejections listed once) and notes."""
    if not resolutions:
        return "(no connections resolved)"
    rows = []
    why: Dict[tuple, List[int]] = {}
    for i in sorted(resolutions):
        r = resolutions[i]
        kernel = r.kernel + (" (fallback)" if r.fallback else "")
        prov = _provider(r.provider, r.provider_version)
        kprov = _provider(r.kernel_provider, r.kernel_version)
        if r.kernel_provider and kprov != prov:
            prov = f"{prov} / kernel: {kprov}"
        rows.append([f"#{i} {r.src} -> {r.dst}", r.requested, r.implementation, kernel, prov,
                     ", ".join(n for n, _ in r.rejected) or "-"])
        for n, reasons in r.rejected:
            why.setdefault((n, tuple(reasons)), []).append(i)
    parts = [format_table(["connection", "requested", "implementation", "kernel", "provider", "rejected"], rows)]
    if why:
        parts.append("rejected candidates:")
        for (n, reasons), idx in why.items():
            parts.append(f"  {n} ({', '.join(f'#{i}' for i in idx)}): {'; '.join(reasons)}")
    notes: Dict[str, List[int]] = {}
    for i in sorted(resolutions):
        for note in [resolutions[i].note] + [f"name clash: {c}" for c in getattr(resolutions[i], "clash", ())]:
            if note:
                notes.setdefault(note, []).append(i)
    if notes:
        parts.append("notes:")
        parts.extend(f"  {', '.join(f'#{i}' for i in idx)}: {note}" for note, idx in notes.items())
    return "\n".join(parts)


def _region_rows(compiled: Any, layout: Any) -> List[List[Any]]:
    rows = []
    for name, spec in layout.regions.items():
        if name in compiled.constant_regions:
            mode = "constant"
        elif name in compiled.exported_memories:
            mode = "exported"
        elif name in compiled.frozen_regions:
            mode = "frozen"
        else:
            mode = "runtime"
        status = "active" if name in compiled.active_regions else "eliminated"
        extra = ""
        if name in compiled.exported_paths:
            extra = compiled.exported_paths[name]
        elif name in compiled.constant_buffers:
            extra = f"{_n_values(compiled.constant_buffers[name])} values as buffers"
        rows.append([name, layout.region_numel(name), spec.period, mode, status, extra or "-"])
    return rows


def _n_values(obj: Any) -> int:
    if isinstance(obj, dict):
        return sum(_n_values(v) for v in obj.values())
    numel = getattr(obj, "numel", None)
    return int(numel()) if callable(numel) else 0


def format_regions(compiled: Any, layout: Any) -> str:
    """Table of every region of the original layout: positions, period, mode, status."""
    return format_table(["region", "positions", "period", "mode", "status", "state"],
                        _region_rows(compiled, layout))


def format_report(compiled: Any) -> str:
    """The full readable report of a :class:`~canvas_core.compiler.compiler.CompiledProgram`."""
    head = (f"CompiledProgram for {compiled.device}/{compiled.dtype}"
            + (f", kernel={compiled.kernel}" if compiled.kernel else "")
            + f": {len(compiled.active_regions)}/{len(compiled.all_regions)} regions active, "
            f"{len(compiled.active_connections)} connections, {compiled.n_eliminated} regions eliminated")
    parts = [head, "", "regions:"]
    parts.append(format_regions(compiled, _full_layout(compiled)))
    if compiled.plan is not None:
        p = compiled.plan
        parts += ["", f"plan: N={p.n} positions, {len(p.fn_types)} fn types "
                      f"({', '.join(p.fn_types) or '-'}), built in {p.build_seconds * 1e3:.1f} ms"]
        parts += ["", "connections:", format_resolutions(p.resolutions)]
        groups = format_groups(p)
        if groups:
            parts += ["", "fn groups (in a canvas layer / inside a backbone):", groups]
    else:
        parts += ["", "connections: " + ", ".join(f"{c.src} -> {c.dst}" for c in compiled.active_connections)]
    identity = getattr(compiled, "identity", None) or {}
    if identity:
        parts += ["", "identity binders:", format_table(
            ["region", "mode", "slots", "birth/death", "binding_fn", "implementation", "provider"],
            [[r, d["mode"], d["slot_capacity"], "yes" if d["birth_death"] else "no", d["binding_fn"],
              d["implementation"], d["provider"] or "-"] for r, d in identity.items()])]
    return "\n".join(parts)


def format_groups(plan: Any) -> str:
    """Per resolved fn group: how a canvas layer runs it and how a grafted backbone runs it
    (``BackboneAdapter.install_topology``: softmax-family groups run the same kernel on the
    backbone's own q/k/v; other types run their module behind one gate that starts at 0).  A type
    that declares ``learns_at_init=False`` is flagged here and in the notes at compile time; what
    the build-time probe of a canvas layer or a backbone finds is added to the notes once it has
    built the module (the probe needs torch), and flags the column of where it was found."""
    rows = []
    for fn, g in plan.groups.items():
        r = g.resolved
        if r is None:
            continue
        if r.fused:
            kern = r.kernel.name if r.kernel is not None else REFERENCE_KERNEL
            rows.append([fn, len(g.connections), f"fused kernel {kern}",
                         f"backbone's own q/k/v, kernel {kern}"])
        else:
            own = "own module" + (f" (kernel {r.kernel.name})" if r.kernel is not None else "")
            declared, note = bool(getattr(r, "no_gradient_at_init", "")), r.note or ""
            layer, backbone = (_STUCK if declared or probe.search(note) else "" for probe in (_LAYER_FOUND, _BACKBONE_FOUND))
            rows.append([fn, len(g.connections), own + layer,
                         own + " on the block's hidden states, one gate, 0 at init" + backbone])
    if not rows:
        return ""
    return format_table(["fn", "connections", "canvas layer", "inside a backbone"], rows)


_STUCK = "; NO GRADIENT AT INIT"
#: how the build probes' findings of a group with no gradient at initialisation start in its notes
#: (``flag_connections`` of ``runtime/canvas_attention.py`` and ``looping/topology_install.py``)
_LAYER_FOUND, _BACKBONE_FOUND = re.compile(r"(?:^|; )in a canvas layer: "), re.compile(r"(?:^|; )inside '[^']*': ")


def disprove_no_gradient(plan: Any, fn: str, where: str) -> bool:
    """Group ``fn`` of ``plan`` declares ``learns_at_init=False`` but a build probe ``where`` (``"in a
    canvas layer"``, ``"inside 'cogvideox'"``) found a gradient at initialisation: its note says so
    instead of the declaration's claim, and the fn groups table stops flagging it.  ``plan`` must
    be one the caller owns (its groups are updated).  Returns whether there was a declaration to
    correct (False also when ``plan`` has no group ``fn``)."""
    if fn not in plan.groups:
        return False
    found = (f"{fn!r} declares learns_at_init=False, but {where} the build probe finds a gradient at "
             "initialisation: it learns from step 1 (drop the declaration)")
    group = plan.groups[fn]
    r = group.resolved
    declared = getattr(r, "no_gradient_at_init", "") if r is not None else ""
    if not declared:
        return False
    group.resolved = dataclasses.replace(r, note=(r.note or "").replace(declared, found), no_gradient_at_init="")
    return True


def format_plan_report(plan: Any) -> str:
    """``ExecutionPlan`` summary followed by its resolution table (what ``plan.report()`` shows)."""
    return plan.summary().split("\n  connection #")[0] + "\n\nconnections:\n" + format_resolutions(plan.resolutions)


def _full_layout(compiled: Any) -> Any:
    """The original layout (to list eliminated regions too), else the reduced one."""
    src = getattr(compiled, "source_schema", None)
    return src.layout if src is not None else compiled.schema.layout


def compiled_to_dict(compiled: Any) -> Dict[str, Any]:
    """JSON-compatible dict of a compiled program (tensors summarized by shape)."""
    plan = compiled.plan
    layout = _full_layout(compiled)
    return {
        "device": compiled.device,
        "dtype": compiled.dtype,
        "kernel": compiled.kernel,
        "schema_hash": compiled.schema.schema_hash(),
        "schema": compiled.schema.to_dict(),
        "all_regions": sorted(compiled.all_regions),
        "active_regions": sorted(compiled.active_regions),
        "frozen_regions": sorted(compiled.frozen_regions),
        "constant_regions": sorted(compiled.constant_regions),
        "exported_memories": sorted(compiled.exported_memories),
        "exported_paths": dict(compiled.exported_paths),
        "constant_buffers": {k: _shapes(v) for k, v in compiled.constant_buffers.items()},
        "n_eliminated": compiled.n_eliminated,
        "regions": [dict(zip(["region", "positions", "period", "mode", "status", "state"], r))
                    for r in _region_rows(compiled, layout)],
        "connections": [
            {"index": i, "src": c.src, "dst": c.dst, "weight": c.weight,
             **({"resolution": plan.resolutions[i].to_dict()} if plan is not None and i in plan.resolutions else {})}
            for i, c in enumerate(compiled.active_connections)
        ],
        "identity": {r: dict(d) for r, d in (getattr(compiled, "identity", None) or {}).items()},
        "plan": None if plan is None else {
            "n": plan.n, "fn_types": list(plan.fn_types),
            "rectangles": {fn: g.n_rects for fn, g in plan.groups.items()},
        },
    }


def _shapes(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _shapes(x) for k, x in v.items()}
    shape = getattr(v, "shape", None)
    return list(shape) if shape is not None else str(type(v).__name__)
