"""`CanvasProgram`: typed process semantics layered on a `CanvasSchema`, its file form, and
`validate_constraints`. Pure Python."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from canvas_core.schema.jsonio import dump_json, loads_strict, read_json_source
from canvas_core.errors import (
    CanvasError, CanvasTypeError, ProgramError, SchemaFormatError, SettingError, did_you_mean, user_stacklevel,
)
from canvas_core.program.constants import CONSTRAINT_VALUES, OPERATORS, closest
from canvas_core.program.identity import IdentitySpec
from canvas_core.program.specs import ClockSpec, ConnectionProgram, ConstraintSpec, LearningSpec, RegionProgram
from canvas_core.schema.schema import CanvasSchema

__all__ = ["CanvasProgram", "validate_constraints", "PROGRAM_VERSION"]

PROGRAM_VERSION = "2.0.0"
_PROGRAM_KEYS = ("program_version", "region_programs", "connection_programs")
_NESTED = {"clock": ClockSpec, "learning": LearningSpec, "constraints": ConstraintSpec, "identity": IdentitySpec}


@dataclass
class CanvasProgram:
    """Typed process semantics layered on top of a ``CanvasSchema``.

    The schema declares structure (where regions live, who attends to whom); the program
    declares behaviour (what each region is, how it learns, when it updates, what happens at
    deploy). ``regions`` may cover a subset of the schema's regions; ``connections`` is keyed
    by ``(src, dst)`` of connections that exist in the schema's topology.

    Example::

        program = CanvasProgram(schema=schema, regions={"obs": RegionProgram(family="observation")})
        program.to_json("my_program.json")
        assert CanvasProgram.from_json("my_program.json") == program
    """

    schema: CanvasSchema
    regions: Dict[str, RegionProgram] = field(default_factory=dict)
    connections: Dict[Tuple[str, str], ConnectionProgram] = field(default_factory=dict)
    version: str = PROGRAM_VERSION

    def __post_init__(self) -> None:
        self._check()
        self.regions, self.connections = dict(self.regions), dict(self.connections)  # copies of the caller's
        for name, rp in self.regions.items():
            _warn_compile_mode_conflict(name, rp)
            _warn_family_conflict(name, rp, self.schema.layout.regions.get(name))
            _warn_unknown_event_source(name, rp, self.schema.layout.regions)

    def _check(self) -> None:
        """The constructor's checks; ``to_dict`` and ``summary`` run them again, since the
        dicts may have been changed in place (a file that cannot be loaded back is refused)."""
        if not isinstance(self.schema, CanvasSchema):
            raise CanvasTypeError(
                f"CanvasProgram schema must be a CanvasSchema, got {type(self.schema).__name__}; "
                "build one with CanvasSchema(layout, topology) or compile_schema(...)"
            )
        if not isinstance(self.version, str) or not self.version:
            raise CanvasTypeError(f"CanvasProgram version must be a non-empty string, got {self.version!r}")
        known = self.schema.layout.regions
        if not isinstance(self.regions, Mapping):
            raise CanvasTypeError(f"CanvasProgram regions must be a dict name -> RegionProgram, got {type(self.regions).__name__}")
        for name, rp in self.regions.items():
            if name not in known:
                raise ProgramError(
                    f"CanvasProgram: region program {name!r} names no region of the schema.{_mean(name, known)} "
                    f"Regions: {list(known)}. Fix the name or add the region to the layout."
                )
            if not isinstance(rp, RegionProgram):
                raise CanvasTypeError(f"CanvasProgram: regions[{name!r}] must be a RegionProgram, got {rp!r}")
        if not isinstance(self.connections, Mapping):
            raise CanvasTypeError(
                "CanvasProgram connections must be a dict (src, dst) -> ConnectionProgram, got "
                f"{type(self.connections).__name__}"
            )
        topo = self.schema.topology
        edges = {(c.src, c.dst) for c in topo.connections} if topo is not None else set()
        for key, cp in self.connections.items():
            if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)):
                raise CanvasTypeError(
                    f"CanvasProgram: connection program keys must be (src, dst) tuples of region names, got {key!r}"
                )
            for side, name in zip(("src", "dst"), key):
                if name not in known:
                    raise ProgramError(
                        f"CanvasProgram: connection program {key[0]!r} -> {key[1]!r}: {side} region {name!r} "
                        f"is not in the schema.{_mean(name, known)} Regions: {list(known)}."
                    )
            if key not in edges:
                raise ProgramError(
                    f"CanvasProgram: connection program {key[0]!r} -> {key[1]!r} has no matching connection "
                    f"in the schema's topology; add Connection(src={key[0]!r}, dst={key[1]!r}) or drop it"
                )
            if not isinstance(cp, ConnectionProgram):
                raise CanvasTypeError(f"CanvasProgram: connections[{key!r}] must be a ConnectionProgram, got {cp!r}")
            _check_key_unambiguous(key, edges)
        if topo is not None:
            for i, c in enumerate(topo.connections):
                if c.operator not in OPERATORS:
                    hint = closest(c.operator, OPERATORS)
                    raise ProgramError(
                        f"CanvasProgram: connection #{i} ({c.src} -> {c.dst}) has unknown operator {c.operator!r}."
                        f"{f' Did you mean {hint!r}?' if hint else ''} Use one of {sorted(OPERATORS)}."
                    )

    # --- convenience ------------------------------------------------------------------------
    @property
    def layout(self):
        return self.schema.layout

    @property
    def topology(self):
        return self.schema.topology

    def region(self, name: str) -> RegionProgram:
        """The program of a region (the default ``RegionProgram()`` when none was declared)."""
        if name not in self.schema.layout.regions:
            raise ProgramError(f"CanvasProgram has no region {name!r}.{_mean(name, self.schema.layout.regions)}")
        rp = self.regions.get(name, RegionProgram())
        if not isinstance(rp, RegionProgram):  # put into program.regions after construction
            raise CanvasTypeError(f"CanvasProgram: regions[{name!r}] must be a RegionProgram, got {rp!r:.80}")
        return rp

    # --- dict / JSON -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-compatible dict: the schema's dict plus ``program_version``, ``region_programs``
        and ``connection_programs`` (``"src|dst"`` keys); defaults are omitted."""
        self._check()
        d = self.schema.to_dict()
        d["program_version"] = self.version
        d["region_programs"] = {name: _spec_to_dict(rp) for name, rp in self.regions.items()}
        if self.connections:
            d["connection_programs"] = {f"{s}|{t}": _spec_to_dict(cp) for (s, t), cp in self.connections.items()}
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "CanvasProgram":
        """Build from a dict made by :meth:`to_dict` (or canvas-engineering). Malformed input
        raises ``SchemaFormatError`` naming the offending key."""
        if not isinstance(d, dict):
            raise SchemaFormatError(f"a canvas program must be a JSON object, got {type(d).__name__}")
        if "schema" in d and "layout" not in d:  # also accept {"schema": {...}, "region_programs": ...}
            schema_part = d["schema"]
            extra = [k for k in d if k not in _PROGRAM_KEYS and k != "schema"]
            if extra:
                raise SchemaFormatError(f"unknown top-level key(s) {extra} next to 'schema'; remove them")
        else:
            schema_part = {k: v for k, v in d.items() if k not in _PROGRAM_KEYS}
        schema = CanvasSchema.from_dict(schema_part)
        version = d.get("program_version", PROGRAM_VERSION)
        if not isinstance(version, str) or not version:
            raise SchemaFormatError(f"program_version must be a non-empty string, got {version!r}")
        major = PROGRAM_VERSION.split(".")[0]
        if version.split(".")[0].strip() != major:
            raise SchemaFormatError(
                f"program_version {version[:40]!r} is not supported (this canvas-core reads {major}.x "
                "programs); upgrade canvas-core or convert the file")
        rps = d.get("region_programs", {})
        if not isinstance(rps, dict):
            raise SchemaFormatError(f"region_programs must be an object name -> region program, got {type(rps).__name__}")
        regions = {}
        for name, rd in rps.items():
            regions[name] = _spec_from_dict(RegionProgram, rd, f"region_programs.{name}")
        cps = d.get("connection_programs", {})
        if not isinstance(cps, dict):
            raise SchemaFormatError(
                f"connection_programs must be an object 'src|dst' -> connection program, got {type(cps).__name__}"
            )
        connections = {}
        topo = schema.topology
        edges = {(c.src, c.dst) for c in topo.connections} if topo is not None else set()
        for key, cd in cps.items():
            pair = _split_key(key, schema.layout.regions, edges)
            connections[pair] = _spec_from_dict(ConnectionProgram, cd, f"connection_programs.{key}")
        try:
            return cls(schema=schema, regions=regions, connections=connections, version=version)
        except CanvasError as exc:
            raise SchemaFormatError(f"invalid canvas program: {exc}") from None

    def to_json(self, path: Union[str, os.PathLike, None] = None, *, indent: Optional[int] = 2) -> str:
        """Serialize to a JSON string; also write it to ``path`` when given."""
        return dump_json(self.to_dict(), path, "the canvas program", indent=indent)

    @classmethod
    def from_json(cls, path: Union[str, os.PathLike]) -> "CanvasProgram":
        """Load from a JSON file path or a JSON string (``path``, named as in canvas-engineering)."""
        source = path
        raw, where = _read(source)
        data = loads_strict(raw, where)  # a repeated key is refused, not silently dropped
        try:
            return cls.from_dict(data)
        except SchemaFormatError as exc:
            raise SchemaFormatError(f"{where}: {exc}") from None

    def __repr__(self) -> str:
        from canvas_core._reprs import program_repr

        return program_repr(self)

    def summary(self, detail: bool = False) -> str:
        """Human-readable summary, canvas-engineering's text: the number of programmed regions,
        their families, non-default carriers and compile modes, and the operators of the
        connection programs. ``detail=True`` adds one line per region (family, carrier, compile
        mode, tags, clock, learning, constraints, identity), the non-attend operators of the
        topology's connections and the connection programs."""
        from canvas_core._reprs import program_summary

        self._check()
        lines = program_summary(self)
        if not detail:
            return "\n".join(lines)
        topo = self.schema.topology
        conns = topo.connections if topo is not None else []
        lines.append(f"  {len(conns)} connections; regions:")
        width = max((len(n) for n in self.regions), default=0)
        for name, rp in self.regions.items():
            parts = [f"family={rp.family}", f"carrier={rp.carrier}", f"compile_mode={rp.compile_mode}"]
            if rp.tags:
                parts.append("tags=" + ",".join(rp.tags))
            if rp.clock is not None:
                c = rp.clock
                rule = f"every {c.period}" if c.mode == "periodic" else f"{c.mode}:{c.event_source}"
                parts.append(f"clock={c.domain}/{rule}")
            if rp.learning is not None:
                parts.append(f"learning={rp.learning.mode}")
            if rp.constraints is not None:
                set_ = [f"{k}={getattr(rp.constraints, k)}" for k in CONSTRAINT_VALUES if getattr(rp.constraints, k)]
                parts.append("constraints(" + ",".join(set_) + ")")
            if rp.identity is not None:
                parts.append(f"identity={rp.identity.mode}/{rp.identity.slot_capacity}")
            lines.append(f"  {name:<{width}}  " + " ".join(parts))
        ops = [c for c in conns if c.operator != "attend"]
        if ops:
            counts = Counter(c.operator for c in ops)
            lines.append("  connection operators: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
            for c in ops:
                lines.append(f"    {c.src} -> {c.dst}: {c.operator}")
        for (s, t), cp in self.connections.items():
            extra = f" trigger={cp.trigger!r}" if cp.trigger else ""
            lines.append(f"  program {s} -> {t}: {cp.operator} write_mode={cp.write_mode}{extra}")
        return "\n".join(lines)


def validate_constraints(program: CanvasProgram) -> List[str]:
    """Check the structural constraints declared on regions; return the violations.

    * every ``ConstraintSpec`` value is a known one;
    * ``causal_direction="acyclic"``: no cycle among the regions reachable from the constrained
      region through the topology's connections (``src -> dst``; a region's connection to
      itself is self-attention, not a cycle between regions);
    * ``causal_direction="forward_only"``: every connection leaving the constrained region goes
      to a region whose first frame ``t0`` is the same or later.

    Returns human-readable strings, one per violation; ``[]`` when all hold.

    Raises:
        CanvasError: the program was changed in place into one its constructor refuses (a region
            program for no region, a value that is no ``RegionProgram``, a connection naming a
            missing region): the same error ``to_dict`` raises for it.
    """
    if not isinstance(program, CanvasProgram):
        raise CanvasTypeError(f"validate_constraints expects a CanvasProgram, got {type(program).__name__}")
    program._check()  # the dicts / the topology's list may have been changed since construction
    if program.schema.topology is not None:
        program.schema.topology.validate(program.schema.layout)
    layout = program.schema.layout
    conns = program.schema.topology.connections if program.schema.topology is not None else []
    # each region's distinct targets (itself left out) in connection order, built once for both checks
    targets: Dict[str, Dict[str, None]] = {}
    for c in conns:
        if c.src != c.dst:
            targets.setdefault(c.src, {})[c.dst] = None
    graph: Dict[str, List[str]] = {src: list(dsts) for src, dsts in targets.items()}
    cycle_free: set = set()  # regions from which no cycle is reachable, shared by every search
    out: List[str] = []
    for name, rp in program.regions.items():
        cs = rp.constraints
        if cs is None:
            continue
        for key, allowed in CONSTRAINT_VALUES.items():
            value = getattr(cs, key)
            if value is not None and value not in allowed:
                out.append(f"{name}: unknown {key} {value!r} (valid: {sorted(allowed)})")
        if cs.causal_direction == "acyclic":
            cycle = _find_cycle(graph, name, cycle_free)
            if cycle:
                out.append(f"{name}: causal_direction='acyclic' violated — cycle {' -> '.join(cycle)}")
        elif cs.causal_direction == "forward_only":
            t0 = layout.regions[name].t0
            for dst in graph.get(name, ()):
                dt0 = layout.regions[dst].t0
                if dt0 < t0:
                    out.append(f"{name}: causal_direction='forward_only' violated — connects to {dst} "
                               f"(t0={dt0} < {t0})")
    return out


# --- helpers -----------------------------------------------------------------------------------
def _mean(name: str, known) -> str:
    return did_you_mean(name, known)


def _find_cycle(graph: Dict[str, List[str]], start: str, cycle_free: set) -> Optional[List[str]]:
    """A cycle (as a closed list of nodes) among the nodes reachable from ``start``, or None.

    ``cycle_free`` holds nodes known to reach no cycle; the search skips them and adds every node it
    finishes (all its successors finished, so it reaches no cycle either), so searches from many
    starts visit each node once in all, and find the cycles a search without it finds."""
    if start in cycle_free:
        return None
    state: Dict[str, int] = {}  # 1 = on the current path, 2 = finished (or in cycle_free)
    path: List[str] = []
    stack = [(start, iter(graph.get(start, ())))]
    state[start] = 1
    path.append(start)
    while stack:
        node, it = stack[-1]
        nxt = next(it, None)
        if nxt is None:
            stack.pop()
            path.pop()
            state[node] = 2
            cycle_free.add(node)
            continue
        s = 2 if nxt in cycle_free else state.get(nxt, 0)
        if s == 1:
            return path[path.index(nxt):] + [nxt]
        if s == 0:
            state[nxt] = 1
            path.append(nxt)
            stack.append((nxt, iter(graph.get(nxt, ()))))
    return None


def _spec_to_dict(spec: Any) -> Dict[str, Any]:
    d: Dict[str, Any] = {}
    for f in fields(spec):
        value = getattr(spec, f.name)
        default = f.default if f.default is not MISSING else None
        if value == default:
            continue
        if f.name in _NESTED and value is not None:
            value = _spec_to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        d[f.name] = value
    return d


def _spec_from_dict(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise SchemaFormatError(f"{where}: must be an object of {cls.__name__} fields, got {type(d).__name__}")
    names = [f.name for f in fields(cls)]
    kw: Dict[str, Any] = {}
    for key, value in d.items():
        if key not in names:
            hint = did_you_mean(key, names)
            raise SchemaFormatError(f"{where}: unknown key {key!r}.{hint} Known keys: {names}")
        if cls is RegionProgram and key in _NESTED and value is not None:
            value = _spec_from_dict(_NESTED[key], value, f"{where}.{key}")
        elif key in ("tags", "losses"):
            if not isinstance(value, list):
                raise SchemaFormatError(f"{where}.{key}: must be a list of strings, got {value!r}")
            value = tuple(value)
        kw[key] = value
    try:
        return cls(**kw)
    except CanvasError as exc:
        if isinstance(exc, SettingError):
            raise  # a malformed limit variable is not the file's fault
        raise SchemaFormatError(f"{where}: {exc}") from None


def _warn_compile_mode_conflict(name: str, rp: RegionProgram) -> None:
    """Warn when a region's ``learning.compile_mode`` overrides a different, explicit ``compile_mode``."""
    wins = rp.effective_compile_mode
    if rp.compile_mode != "runtime" and wins != rp.compile_mode:
        warnings.warn(
            f"region {name!r}: compile_mode={rp.compile_mode!r} and learning.compile_mode={wins!r} disagree; "
            f"learning.compile_mode wins, so the compiler applies {wins!r}, not {rp.compile_mode!r} (see "
            "'compile_mode' in docs/programs.md). Give both the same mode, or leave one of them 'runtime'",
            UserWarning, stacklevel=user_stacklevel())


def _warn_family_conflict(name: str, rp: RegionProgram, spec: Any) -> None:
    """Warn when the layout's ``RegionSpec.family`` names another family than the region's
    program: the program's is the one the model and the compiler use (family embeddings, learning
    defaults), while ``layout.summary()`` and the schema file show the spec's."""
    declared = getattr(spec, "family", None)
    if declared is not None and rp.family is not None and declared != rp.family:
        warnings.warn(
            f"region {name!r}: RegionSpec family={declared!r} and RegionProgram family={rp.family!r} disagree; "
            f"the program's {rp.family!r} is what CanvasModel and the compiler use, while layout.summary() and "
            "the schema file show the RegionSpec's. Give both the same family, or leave RegionSpec.family unset "
            "(None)", UserWarning, stacklevel=user_stacklevel())


def _warn_unknown_event_source(name: str, rp: RegionProgram, known: Mapping[str, Any]) -> None:
    """Warn when an ``on_event`` clock listens to a region the schema does not have: the scheduler
    reads ``summaries[region][kind]``, so it fires only when the summaries given to it hold that
    key, never on a region's residual summary. canvas-engineering accepts such a clock, hence a
    warning and not an error (a source fed by hand, e.g. from the environment, is legitimate)."""
    clock = rp.clock
    if clock is None or clock.mode != "on_event" or not isinstance(clock.event_source, str):
        return
    source, _, kind = clock.event_source.rpartition(".")  # the scheduler's split: region names may hold dots
    if not source or source in known:  # no dot: refused by ClockSpec
        return
    shown = ", ".join(map(repr, list(known)[:20])) + (", ..." if len(known) > 20 else "")
    warnings.warn(
        f"region {name!r}: its clock fires on event_source {clock.event_source!r} ('region.kind'), but "
        f"{source!r} is no region of the schema.{_mean(source, known)} Regions: [{shown}]. The scheduler "
        f"reads summaries[{source!r}][{kind!r}], so this clock fires only when the summaries passed to it "
        "hold that key (no region's residual summary does). If it is meant to listen to a region, name a "
        "region of the schema; a signal fed in by hand is fine (canvas-engineering accepts it too)",
        UserWarning, stacklevel=user_stacklevel())


def _readings(key: str) -> List[Tuple[str, str]]:
    """Every ``(src, dst)`` that the file key ``"src|dst"`` can stand for (split at each ``|``)."""
    parts = key.split("|")
    return [("|".join(parts[:i]), "|".join(parts[i:])) for i in range(1, len(parts))]


def _check_key_unambiguous(key: Tuple[str, str], edges) -> None:
    """Refuse a connection program whose file key ``"src|dst"`` also spells another connection of
    the topology (region names holding ``|``): the file could not say which one it belongs to."""
    if "|" not in key[0] and "|" not in key[1]:
        return
    text = f"{key[0]}|{key[1]}"
    others = [pair for pair in _readings(text) if pair != key and pair in edges]
    if others:
        s, t = others[0]
        raise ProgramError(
            f"CanvasProgram: connection program {key[0]!r} -> {key[1]!r} would be written under the key "
            f"{text!r} ('src|dst') of the program file, which is also the key of the connection {s!r} -> "
            f"{t!r}; the file could not tell them apart. Rename a region so that its name holds no '|' "
            "(e.g. 'a|b' -> 'a_b')")


def _split_key(key: Any, known, edges=frozenset()) -> Tuple[str, str]:
    if not isinstance(key, str) or "|" not in key:
        raise SchemaFormatError(f"connection_programs key {key!r} must be 'src|dst'")
    readings = [(src, dst) for src, dst in _readings(key) if src in known and dst in known]
    for pair in readings:  # the connection of the topology it names (unique: see _check_key_unambiguous)
        if pair in edges:
            return pair
    if readings:
        return readings[0]  # no such connection: CanvasProgram says so
    src, dst = key.split("|", 1)
    bad = src if src not in known else dst
    raise SchemaFormatError(
        f"connection_programs key {key!r}: region {bad!r} is not in the schema.{did_you_mean(bad, known)}"
    )


def _read(source: Any) -> Tuple[str, str]:
    return read_json_source(
        source, "program", empty="pass a program file path or a JSON object string",
        nul=lambda p: f"program path {p[:80]!r} contains a NUL byte; pass a valid file path")
