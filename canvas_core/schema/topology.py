"""`Connection`, `TemporalFill` and `CanvasTopology`: who attends to whom, how, and when."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Set, Tuple

from canvas_core.errors import (
    CanvasTypeError,
    SchemaError,
    TopologyError,
    UnknownRegionError,
    did_you_mean,
)
from canvas_core.schema._connection_list import ConnectionList
from canvas_core.schema._validate import (OPERATORS, as_bool, as_choice, as_float, as_int, as_str, check_name,
                                          check_ordered, is_int, looks_like_typo, normalization_hint)
from canvas_core.schema.limits import check_size

if TYPE_CHECKING:  # pragma: no cover
    from canvas_core.schema.layout import CanvasLayout
    from canvas_core.schema.masks import MaskSpec

__all__ = ["TemporalFill", "Connection", "CanvasTopology", "WRITE_MODES", "DEFAULT_FN", "MAX_WEIGHT"]

DEFAULT_FN = "cross_attention"
#: the largest connection weight: float32's largest value (a dense mask and kernels hold weights as float32)
MAX_WEIGHT = 3.4028234663852886e38
WRITE_MODES = frozenset({"add", "replace", "gate"})


class TemporalFill(str, Enum):
    """What a temporal connection links when no destination frame sits at its target.

    DROP: nothing. HOLD (default): the nearest earlier destination frame (zero-order hold).
    INTERPOLATE: the nearest earlier and later frames weighted by the other's distance
    (order 1), or inverse-distance weights ``1/dist^k`` over the ``k+1`` nearest frames (order k).
    """

    DROP = "drop"
    HOLD = "hold"
    INTERPOLATE = "interpolate"

    def __str__(self) -> str:  # "hold", not "TemporalFill.HOLD", in messages and reports
        return self.value

    @classmethod
    def _missing_(cls, value: Any) -> "TemporalFill":
        if isinstance(value, str):
            for f in cls:
                if f.value == value.lower():
                    return f
        known = [f.value for f in cls]
        raise SchemaError(
            f"temporal_fill must be one of {known}, got {value!r}" + did_you_mean(str(value), known)
        )


def _as_fill(value: Any) -> TemporalFill:
    if isinstance(value, TemporalFill):
        return value
    if isinstance(value, str):
        try:
            return TemporalFill(value.lower())
        except ValueError:
            pass
    raise SchemaError(
        f"temporal_fill must be one of {[f.value for f in TemporalFill]}, got {value!r}"
        + did_you_mean(value, [f.value for f in TemporalFill])
    )


@dataclass(frozen=True)
class Connection:
    """One attention operation: ``src`` positions (queries) read ``dst`` positions (keys/values).

    Args:
        src: Region whose positions are the queries (the one that is updated).
        dst: Region whose positions are the keys and values.
        weight: Connection weight (> 0, at most ``MAX_WEIGHT``, the largest float32); enters
            attention as the additive bias ``log(weight)``.
        t_src: Frame offset of the queries from the reference frame; None = every frame.
        t_dst: Frame offset of the keys from the reference frame; None = every frame.
        fn: Attention function type; None = the src region's ``default_attn``.
        operator: Semantic intent (set by ``compile_program``: observe, predict, act, ...).
        write_mode: Intended accumulation at the destination: add, replace or gate.  A recorded
            label (kept in schemas and checkpoints) that the runtime does not apply: every mode
            runs like ``"add"``, and building a layer with another mode warns (``UserWarning``).
        temporal_fill: What to link when no destination frame sits at the target.
        interpolation_order: Order of ``TemporalFill.INTERPOLATE`` (1 = linear).
        mask: Optional ``MaskSpec`` restricting which position pairs of the two regions link.
    """

    src: str
    dst: str
    weight: float = 1.0
    t_src: Optional[int] = None
    t_dst: Optional[int] = None
    fn: Optional[str] = None
    operator: str = "attend"
    write_mode: str = "add"
    temporal_fill: TemporalFill = TemporalFill.HOLD
    interpolation_order: int = 1
    mask: Optional["MaskSpec"] = None

    def __post_init__(self) -> None:
        where = f"Connection({self.src!r} -> {self.dst!r})"
        check_name(self.src, f"{where}: src", TopologyError)
        check_name(self.dst, f"{where}: dst", TopologyError)
        w = as_float(self.weight, f"{where}: weight")
        if w <= 0:
            raise TopologyError(
                f"{where}: weight must be > 0 (it enters attention as log(weight)), got {w}; "
                "to remove the edge, delete the connection (fn='none' does not disable it: a 'none' edge "
                "contributes zeros yet still takes its weight's share of each query's mix)"
            )
        if w > MAX_WEIGHT:
            raise TopologyError(
                f"{where}: weight {w:g} is above {MAX_WEIGHT:.4g} (the largest float32): the dense mask would hold "
                "inf and the layer's mixing weights (sums of connection weights) overflow; use a weight <= "
                f"{MAX_WEIGHT:.4g} (already w=1e30 gives the bias log(w)=69: the connection takes all the attention)")
        object.__setattr__(self, "weight", w)
        for attr in ("t_src", "t_dst"):
            v = getattr(self, attr)
            if v is not None and not is_int(v):
                raise CanvasTypeError(f"{where}: {attr} must be an integer frame offset or None, got {v!r}")
            if v is not None:
                object.__setattr__(self, attr, int(v))
        if self.fn is not None:
            as_str(self.fn, f"{where}: fn")
        as_str(self.operator, f"{where}: operator")
        if self.operator not in OPERATORS:
            hint = looks_like_typo(self.operator, OPERATORS)
            raise TopologyError(
                f"{where}: unknown operator {self.operator!r}." + (f" Did you mean {hint!r}?" if hint else "")
                + f" Use one of {sorted(OPERATORS)}")
        as_choice(self.write_mode, WRITE_MODES, f"{where}: write_mode", TopologyError)
        try:
            object.__setattr__(self, "temporal_fill", _as_fill(self.temporal_fill))
        except SchemaError as exc:
            raise TopologyError(f"{where}: {exc}") from None
        order = as_int(self.interpolation_order, f"{where}: interpolation_order")
        if order < 1:
            raise TopologyError(f"{where}: interpolation_order must be >= 1, got {order}")
        object.__setattr__(self, "interpolation_order", order)
        if self.mask is not None:
            from canvas_core.schema.masks import MaskSpec

            if not isinstance(self.mask, MaskSpec):
                raise CanvasTypeError(f"{where}: mask must be a MaskSpec or None, got {type(self.mask).__name__}")

    @property
    def is_temporal(self) -> bool:
        """Whether the connection constrains frames (``t_src`` or ``t_dst`` set)."""
        return self.t_src is not None or self.t_dst is not None

    def describe(self) -> str:
        """Short one-line form, e.g. ``action -> visual [gated] t(0 -> -1) w=0.5``."""
        s = f"{self.src} -> {self.dst}"
        if self.fn:
            s += f" [{self.fn}]"
        if self.is_temporal:
            s += f" t({self.t_src} -> {self.t_dst}, {self.temporal_fill.value})"
        if self.weight != 1.0:
            s += f" w={self.weight:g}"
        return s


@dataclass
class CanvasTopology:
    """A directed graph of attention operations between regions.

    Each ``Connection`` makes the positions of ``src`` attend to those of ``dst``; a
    self-connection is self-attention within a region. With ``t_src``/``t_dst`` offsets a
    connection links, for each reference frame ``ref``, the queries at frame ``ref + t_src`` to the
    keys at the real frame ``(ref + t_dst) * period(src)``; see ``docs/design.md`` for the exact
    rules, periods and temporal fill.

    ``connections`` may be changed after construction (``append``, ``del``, assignment of any ordered
    iterable, which is copied; a set, a mapping, a string or None is refused as by the constructor).
    It is a list that counts its changes, so a layer built from the topology refuses to run once they
    were changed (:mod:`canvas_core.schema.staleness`): build the layer again.
    """

    connections: List[Connection] = field(default_factory=list)

    def __setattr__(self, name: str, value: Any) -> None:
        # what is put in as connections is copied into a counting list (never another topology's)
        if name == "connections" and value is not self.__dict__.get(name):
            value = connection_list(value)
        object.__setattr__(self, name, value)

    def __post_init__(self) -> None:
        _check_entries(self.connections, changed=False)  # the list itself was checked on assignment

    # --- constructors ----------------------------------------------------------------------
    @staticmethod
    def dense(regions: List[str]) -> "CanvasTopology":
        """Every region attends to every region (itself included): a standard transformer."""
        regions = _names(regions, "CanvasTopology.dense regions")
        _check_all_pairs(len(regions), len(regions) ** 2, "dense")
        return CanvasTopology([Connection(a, b) for a in regions for b in regions])

    @staticmethod
    def isolated(regions: List[str]) -> "CanvasTopology":
        """Block-diagonal: each region attends only to itself."""
        return CanvasTopology([Connection(a, a) for a in _names(regions, "CanvasTopology.isolated regions")])

    @staticmethod
    def hub_spoke(hub: str, spokes: List[str], bidirectional: bool = True) -> "CanvasTopology":
        """Star: every region attends to itself, the hub reads every spoke, and (if
        ``bidirectional``) every spoke reads the hub."""
        check_name(hub, "hub_spoke hub region name", TopologyError)
        spokes = _names(spokes, "CanvasTopology.hub_spoke spokes")
        as_bool(bidirectional, "hub_spoke bidirectional")
        conns = [Connection(hub, hub)] + [Connection(s, s) for s in spokes]
        for s in spokes:
            conns.append(Connection(hub, s))
            if bidirectional:
                conns.append(Connection(s, hub))
        return CanvasTopology(conns)

    @staticmethod
    def causal_chain(regions: List[str]) -> "CanvasTopology":
        """A -> B -> C: each region reads itself and the region before it in the chain."""
        regions = _names(regions, "CanvasTopology.causal_chain regions")
        conns = [Connection(r, r) for r in regions]
        conns += [Connection(regions[i], regions[i - 1]) for i in range(1, len(regions))]
        return CanvasTopology(conns)

    @staticmethod
    def causal_temporal(
        regions: List[str],
        layout: Optional["CanvasLayout"] = None,
        temporal_fill: TemporalFill = TemporalFill.HOLD,
    ) -> "CanvasTopology":
        """Each region reads itself at the same frame and every region (itself included) at the
        previous frame; no future leakage. All connections use ``temporal_fill``."""
        regions = _names(regions, "CanvasTopology.causal_temporal regions")
        fill = _as_fill(temporal_fill)
        if layout is not None:
            _check_layout(layout, "causal_temporal")
            known = set(layout.region_names)
            for r in regions:
                if r not in known:
                    raise TopologyError(
                        f"causal_temporal: region {r!r} is not in the layout (regions: {sorted(layout.regions)})."
                        f"{did_you_mean(r, layout.regions)} Add the region or fix the name."
                    )
        _check_all_pairs(len(regions), len(regions) ** 2 + len(regions), "causal_temporal")
        conns: List[Connection] = []
        for r in regions:
            conns.append(Connection(r, r, t_src=0, t_dst=0, temporal_fill=fill))
            conns.append(Connection(r, r, t_src=0, t_dst=-1, temporal_fill=fill))
        for a in regions:
            for b in regions:
                if a != b:
                    conns.append(Connection(a, b, t_src=0, t_dst=-1, temporal_fill=fill))
        return CanvasTopology(conns)

    # --- queries ------------------------------------------------------------------------------
    @property
    def regions(self) -> Set[str]:
        """All region names referenced by connections."""
        return {c.src for c in self.connections} | {c.dst for c in self.connections}

    @property
    def has_temporal_constraints(self) -> bool:
        return any(c.is_temporal for c in self.connections)

    def resolve_fn(self, connection: Connection, layout: Optional["CanvasLayout"] = None) -> str:
        """The attention function type of a connection: ``connection.fn``, else the src region's
        ``default_attn`` (when a layout is given), else ``"cross_attention"``.

        Only the name the connection asks for; no registry is involved.  Lowering calls this once
        per connection, and the compiler's resolution pass decides what runs each type."""
        if not isinstance(connection, Connection):
            raise CanvasTypeError(
                f"resolve_fn expects a Connection, got {type(connection).__name__} {connection!r}"
            )
        if layout is not None:
            _check_layout(layout, "resolve_fn")
        if connection.fn is not None:
            return connection.fn
        if layout is not None:
            try:
                return layout.region_spec(connection.src).default_attn
            except UnknownRegionError as exc:
                raise UnknownRegionError(f"connection {connection.describe()}: {exc}") from None
        return DEFAULT_FN

    def attention_ops(self, layout: Optional["CanvasLayout"] = None) -> List[Tuple[str, str, float, str]]:
        """``[(src, dst, weight, fn), ...]`` with fn resolved (region defaults need ``layout``).

        With a layout, every connection is first checked against it (``validate``)."""
        if layout is not None:
            self.validate(layout)
        return [(c.src, c.dst, c.weight, self.resolve_fn(c, layout)) for c in self.connections]

    def neighbors_of(self, region: str) -> List[str]:
        """Regions that ``region`` attends to (as queries), in connection order, without repeats."""
        return list(dict.fromkeys(c.dst for c in self.connections if c.src == region))

    def attended_by(self, region: str) -> List[str]:
        """Regions that attend to ``region`` (read it as keys/values)."""
        return list(dict.fromkeys(c.src for c in self.connections if c.dst == region))

    def to_block_adjacency(self) -> Dict[Tuple[str, str], float]:
        """Region-level adjacency ``(src, dst) -> weight`` (the largest weight when repeated)."""
        adj: Dict[Tuple[str, str], float] = {}
        for c in self.connections:
            adj[(c.src, c.dst)] = max(adj.get((c.src, c.dst), 0.0), c.weight)
        return adj

    def validate(self, layout: "CanvasLayout") -> "CanvasTopology":
        """Check every connection against a layout; raises ``TopologyError`` naming the first
        connection that refers to a region the layout does not declare. Returns self."""
        _check_layout(layout, "validate")
        conns = self.connections  # a list: it may have been changed since the constructor checked it
        if isinstance(conns, (str, bytes)) or not hasattr(conns, "__iter__"):
            raise CanvasTypeError(f"CanvasTopology connections was replaced by a {type(conns).__name__}; it must be "
                                  "a list of Connection")
        _check_entries(conns, changed=True)
        check_connection_regions(conns, layout.region_names)  # (re-checks a changed layout)
        return self

    # --- torch objects (thin delegates to canvas_core.runtime.delegates; see its docstring) -----
    def to_attention_mask(self, layout: "CanvasLayout", device: Any = "cpu"):
        """Dense ``(N, N)`` float mask: ``[i, j]`` = largest weight linking query i to key j, 0
        where none. Built from the block-sparse plan (imports torch)."""
        from canvas_core.runtime.delegates import topology_attention_mask

        return topology_attention_mask(self.validate(layout), layout, device=device)

    def to_additive_mask(self, layout: "CanvasLayout", device: Any = "cpu"):
        """``(N, N)`` additive mask for ``nn.Transformer``-style layers: ``log(weight)`` where
        linked, ``-inf`` where not; a row with no key at all attends to itself (no NaN)."""
        from canvas_core.runtime.delegates import topology_additive_mask

        return topology_additive_mask(self.validate(layout), layout, device=device)

    def to_block_mask(self, layout: "CanvasLayout", block_size: int = 128):
        """Block-sparse form of the mask (which ``block_size`` tiles are full, partial, empty)."""
        bs = as_int(block_size, "to_block_mask block_size")
        if bs < 1:
            raise SchemaError(f"to_block_mask block_size must be >= 1 (positions per tile), got {bs}")
        from canvas_core.compiler.masks import block_mask  # torch-free: lowering, numpy only

        return block_mask(self.validate(layout), layout, block_size=bs)

    def summary(self, detail: bool = False) -> str:
        """canvas-engineering's summary: one line per linked region pair (``↺`` self, ``↔`` both
        ways, ``→`` one way, largest weight), temporal constraints by fill mode, operators by
        name; ``detail=True`` adds one line per connection."""
        from canvas_core._reprs import topology_summary

        return topology_summary(self, detail)

    def __repr__(self) -> str:
        from canvas_core._reprs import topology_repr

        return topology_repr(self)


def check_connection_regions(connections: Iterable[Any], known: Iterable[str]) -> None:
    """Raise ``TopologyError`` naming the first connection whose ``src`` or ``dst`` is not one of
    the region names ``known`` (the one check behind ``validate`` and the compiler's ``lower``)."""
    known = set(known)
    for i, c in enumerate(connections):
        for side in ("src", "dst"):
            name = getattr(c, side)
            if name not in known:
                what = c.describe() if hasattr(c, "describe") else f"{c.src} -> {c.dst}"
                raise TopologyError(
                    f"connection #{i} ({what}): {side} region {name!r} is not in the layout "
                    f"(regions: {sorted(known)}).{normalization_hint(name, known) or did_you_mean(name, known)} "
                    "Add the region or fix the name.")


def connection_list(value: Any) -> ConnectionList:
    """``value`` (the connections given to or assigned to a topology) copied into a
    :class:`ConnectionList`, in its order; a value without a defined order (a set, a mapping), a
    string, None or anything not iterable is refused with ``CanvasTypeError``.  The entries are
    checked by the constructor and by ``validate``, not here."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise CanvasTypeError(
            f"CanvasTopology connections must be a list of Connection, got {type(value).__name__}; "
            "pass a list such as [Connection('a', 'b'), ...] ([] for none)")
    # the order of the connections is kept (plans, reports and per-connection state follow it)
    check_ordered(value, "CanvasTopology connections", "[Connection('a', 'b'), ...]")
    return ConnectionList(value)


def _check_entries(conns: List[Any], changed: bool) -> None:
    """The size limit and the type of every entry of a topology's connection list; ``changed``:
    checked again by ``validate``, after the list could have been edited (the message says so)."""
    check_size("connections", len(conns), "CanvasTopology number of connections",
               "Connect fewer region pairs (e.g. a hub or a chain instead of all pairs)")
    for i, c in enumerate(conns):
        if not isinstance(c, Connection):
            got = f"{type(c).__name__} ({c!r:.80}): it was put into topology.connections after the topology was " \
                  "built" if changed else f"{type(c).__name__} ({c!r})"
            raise CanvasTypeError(f"CanvasTopology connection #{i} must be a Connection, got {got}; "
                                  "write Connection(src=..., dst=...)")


def _check_all_pairs(n_regions: int, n_connections: int, where: str) -> None:
    """Refuse an all-pairs constructor before it makes its connections."""
    check_size("connections", n_connections,
               f"CanvasTopology.{where} of {n_regions:,} regions: number of connections",
               "Connect fewer region pairs (CanvasTopology.hub_spoke or causal_chain make about "
               "two per region)")


def _check_layout(layout: Any, where: str) -> None:
    from canvas_core.schema.layout import CanvasLayout

    if not isinstance(layout, CanvasLayout):
        raise CanvasTypeError(f"{where}: layout must be a CanvasLayout, got {type(layout).__name__} {layout!r:.80}")


def _names(regions: Iterable[str], where: str = "the list of region names") -> List[str]:
    if isinstance(regions, str):
        raise CanvasTypeError(f"expected a list of region names, got the string {regions!r}; wrap it: [{regions!r}]")
    if isinstance(regions, bytes) or not hasattr(regions, "__iter__"):
        raise CanvasTypeError(
            f"expected a list of region names, got {type(regions).__name__} {regions!r}; write e.g. ['visual', 'action']"
        )
    # the order of the names sets the order of the connections (and which region a chain starts at)
    check_ordered(regions, where, "['visual', 'action']", allow_mapping=True)
    out = list(regions)
    for r in out:
        check_name(r, f"{where}: region name", TopologyError)
    return out
