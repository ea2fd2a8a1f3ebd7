"""What :func:`canvas_core.verify_structure` found: :class:`StructureReport` and its entries.

Plain dataclasses (no torch): a report prints as a readable text (``str(report)``) and converts
to JSON-ready data (``report.to_dict()``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["UndeclaredDependency", "DeadLink", "StructureReport"]


@dataclass(frozen=True)
class UndeclaredDependency:
    """Outputs at ``query_region`` frame ``query_frame`` depend on inputs at ``key_region`` frame
    ``key_frame``, and no declared connection (of ``fn``, or of any type for ``fn=None``) allows it.

    Attributes:
        where: the probed part ("layer", "model", "block 3", ...).
        fn: the fn group whose output carries the dependency; None when only the whole output
            was probed (then ``fn_candidates`` lists the groups that update those queries).
        query_region, key_region: region names ("(uncovered)" for a position of no region;
            "a/b" for a position shared by overlapping regions).
        query_frame, key_frame: canvas frames (``t``) of the query and of the key.
        future: the key's real frame (canvas frame x period) lies after the query's.
        pairs: how many probed (query, key) position pairs showed it.
        strength: the largest gradient magnitude seen, relative to the largest one of the same
            query (1.0: as strong as the query's strongest input); for a read found by value, the
            largest change of the query's output relative to the largest output magnitude.
        fn_candidates: fn groups that update these queries (context for ``fn=None``).
        by: how the read was found: ``"gradient"`` (the query's gradient is non-zero at the key) or
            ``"value"`` (the query's output changed when only the inputs of the key's (region,
            frame) group changed, though no gradient connects them: a read behind ``.detach()``
            or ``torch.no_grad()``).  A value-found read of another sample has ``key_region``
            ``"(another sample)"`` and ``key_frame`` -1.
    """

    where: str
    fn: Optional[str]
    query_region: str
    query_frame: int
    key_region: str
    key_frame: int
    future: bool
    pairs: int
    strength: float
    fn_candidates: Tuple[str, ...] = ()
    by: str = "gradient"

    def __str__(self) -> str:
        when = " (future)" if self.future else ""
        by = f"fn {self.fn!r}" if self.fn is not None else (
            "fn " + "/".join(repr(f) for f in self.fn_candidates) if self.fn_candidates else "the model")
        if self.by == "value":
            what = ("another sample of the batch" if self.key_frame < 0
                    else f"region {self.key_region} frame {self.key_frame}{when}")
            return (f"{self.where}: region {self.query_region} frame {self.query_frame} reads {what} by value "
                    f"(no gradient path: .detach() or no_grad), not declared ({by}; {self.pairs} position "
                    f"pair(s), relative change {self.strength:.2g})")
        return (f"{self.where}: region {self.query_region} frame {self.query_frame} reads region "
                f"{self.key_region} frame {self.key_frame}{when}, not declared ({by}; {self.pairs} "
                f"position pair(s), relative strength {self.strength:.2g})")


@dataclass(frozen=True)
class DeadLink:
    """A declared connection whose links carry no signal in the probed model.

    Attributes:
        where: the probed part.
        connection: index of the connection in ``topology.connections``.
        src, dst: its regions (``src`` reads ``dst``).
        fn: its resolved fn type.
        frames: the dead ``(query frame, key frame)`` cells (every cell when ``whole``).
        whole: no probed pair of the connection carries any signal.
        checked_cells: how many (query frame, key frame) cells of the connection were probed;
            0 when the connection links no (query, key) pair on the layout at all.
    """

    where: str
    connection: int
    src: str
    dst: str
    fn: str
    frames: Tuple[Tuple[int, int], ...]
    whole: bool
    checked_cells: int

    def __str__(self) -> str:
        name = f"connection #{self.connection} {self.src!r} -> {self.dst!r} (fn {self.fn!r})"
        if self.whole and not self.checked_cells:
            return (f"{self.where}: {name} is declared but its offsets (or fill / mask) link no (query, key) "
                    "pair on this layout, so it carries no signal; fix them, or remove the connection")
        if self.whole:
            return f"{self.where}: {name} is declared but carries no signal"
        cells = ", ".join(f"frame {q} <- frame {k}" for q, k in self.frames[:6])
        more = f", ... ({len(self.frames)} of {self.checked_cells} cells)" if len(self.frames) > 6 else ""
        return f"{self.where}: {name} carries no signal at {cells}{more}"


@dataclass
class StructureReport:
    """Result of :func:`canvas_core.verify_structure`.

    Attributes:
        ok: no undeclared dependency was found (and, with ``require_signal``, no declared
            connection carries no signal at all).  Dead links are always listed in ``dead``.
        require_signal: whether a wholly dead connection makes ``ok`` False.
        undeclared: :class:`UndeclaredDependency` entries, one per (part, fn group, query region
            and frame, key region and frame).
        dead: :class:`DeadLink` entries, one per (part, connection).
        exact: every query position (or token) of every part was probed; False when sampled.
        sampling: how the query positions were chosen (stated also when exact).
        parts: the parts that were probed ("layer", "model", "block 0", ...).
        hops: layers composed into the declared pattern of a whole-model probe (1: exact pattern;
            L: the L-hop reachability closure of the topology).
        n_positions: positions N of the canvas (tokens S of a backbone).
        probes: random restarts per query position; ``rtol``: the relative gradient magnitude
            above which an input counts as read.
        notes: anything else worth knowing (gates at zero opened for the probe, batch mixing, ...).
    """

    ok: bool
    undeclared: List[UndeclaredDependency] = field(default_factory=list)
    dead: List[DeadLink] = field(default_factory=list)
    exact: bool = True
    sampling: str = ""
    parts: List[str] = field(default_factory=list)
    hops: int = 1
    n_positions: int = 0
    probes: int = 1
    rtol: float = 0.0
    notes: List[str] = field(default_factory=list)
    require_signal: bool = False

    @property
    def future_reads(self) -> List[UndeclaredDependency]:
        """The undeclared dependencies on a later frame (a causality violation)."""
        return [d for d in self.undeclared if d.future]

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict of the whole report."""
        out = dataclasses.asdict(self)
        out["future_reads"] = len(self.future_reads)
        return out

    def __str__(self) -> str:
        head = "structure verified: OK" if self.ok else "structure verification FAILED"
        how = "exact (every query probed)" if self.exact else "sampled"
        lines = [f"{head} -- {how}; {self.n_positions} positions, parts: {', '.join(self.parts) or '-'}",
                 f"  sampling: {self.sampling}",
                 f"  declared pattern: {'one layer (exact)' if self.hops == 1 else f'{self.hops}-hop closure of the topology'}"
                 f"; {self.probes} random probe(s) per query, read = relative gradient > {self.rtol:g}"]
        if self.undeclared:
            lines.append(f"  undeclared dependencies ({len(self.undeclared)}, {len(self.future_reads)} on the future):")
            lines += [f"    - {d}" for d in self.undeclared]
        whole = [d for d in self.dead if d.whole]
        part = [d for d in self.dead if not d.whole]
        if whole:
            why = "" if self.require_signal else "; reported, not a failure without require_signal"
            lines.append(f"  declared connections carrying no signal ({len(whole)}{why}):")
            lines += [f"    - {d}" for d in whole]
        if part:
            lines.append(f"  declared links partly unused ({len(part)}; the type reads part of its key set):")
            lines += [f"    - {d}" for d in part]
        skipped = [n for n in self.notes if "value check skipped" in n]
        if not self.undeclared and not self.dead and skipped:  # reads by value were not checked there
            lines.append(f"  checked by gradient: no undeclared read, every declared link carries signal; NOT checked: "
                         f"reads without a gradient (behind .detach(), a batch statistic), the value check being skipped "
                         f"in {len(skipped)} place(s) (see the notes)")
        elif not self.undeclared and not self.dead:
            # a note may name connections left unmeasured (a type whose gate starts closed)
            rest = " (apart from what the notes below say)" if self.notes else ""
            lines.append(f"  every dependency is declared and every declared link carries signal{rest}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)
