"""Connections of a compiled declaration: the ``ConnectivityPolicy`` rules and operator wiring."""

from __future__ import annotations

from typing import List, Optional, Tuple

from canvas_core.errors import SizeLimitError
from canvas_core.program._tree import _Child, _Node
from canvas_core.program.constants import DEFAULT_WIRING
from canvas_core.program.fields import ConnectivityPolicy
from canvas_core.schema.limits import LIMITS, limit

__all__ = ["wire_operator"]


# --- connectivity ------------------------------------------------------------------------------
class _Edges:
    def __init__(self, temporal: str) -> None:
        self.temporal = temporal
        self.out: List[Tuple[str, str, Optional[int], Optional[int]]] = []
        self._seen = set()
        self.cap = limit("connections")
        self.where = "the root object"           # the object being wired, for the error message

    def count(self, n: int, n_self: int = 0) -> int:
        """Connections that ``n`` ordered pairs of distinct regions and ``n_self`` self pairs make
        under the temporal policy (``causal`` gives a self pair two frame offsets)."""
        return n + n_self * (2 if self.temporal == "causal" else 1)

    def reserve(self, n: int, what: str, fix: str) -> None:
        """Refuse, before making them, ``n`` more connections that would pass the limit."""
        if len(self.out) + n > self.cap:
            before = f" ({len(self.out) + n:,} with those made before)" if self.out else ""
            self.refuse(f"{what} would make {n:,} connections{before}", fix)

    def refuse(self, what: str, fix: str) -> None:
        raise SizeLimitError(
            f"{what}, over the limit {self.cap:,} on the connections of one topology; refused before making "
            f"them. {fix}, or raise the limit with {LIMITS['connections'][0]}=<n> if the machine really has "
            "room for it")

    def add(self, src: str, dst: str) -> None:
        if self.temporal == "dense":
            offs = [(None, None)]
        elif self.temporal == "same_frame":
            offs = [(0, 0)]
        else:  # causal
            offs = [(0, 0), (0, -1)] if src == dst else [(0, -1)]
        for ts, td in offs:
            key = (src, dst, ts, td)
            if key not in self._seen:
                if len(self.out) >= self.cap:  # the sparse policies add few; this bounds any mix
                    self.refuse(f"wiring {self.where} makes more than {self.cap:,} connections", _SPARSER)
                self._seen.add(key)
                self.out.append(key)


_SPARSER = ("Use a sparser ConnectivityPolicy (intra='causal_chain', 'star' or 'isolated'; "
            "array_element='ring' or 'isolated') or fewer fields")


def _intra(e: _Edges, leaves: List[str], policy: str) -> None:
    if policy == "dense":
        n = len(leaves)
        if n > 1:
            e.reserve(e.count(n * (n - 1), n),
                      f"{e.where}: ConnectivityPolicy(intra='dense') connects each of its {n:,} fields "
                      f"({leaves[0]!r} ... {leaves[-1]!r}) to every field, which",
                      "Use intra='causal_chain' or intra='star' (about two connections per field) or "
                      "intra='isolated', or group the fields into nested objects")
        for a in leaves:
            for b in leaves:
                e.add(a, b)
    elif policy == "isolated":
        for a in leaves:
            e.add(a, a)
    elif policy == "causal_chain":
        for a in leaves:
            e.add(a, a)
        for i in range(1, len(leaves)):
            e.add(leaves[i], leaves[i - 1])
    elif policy == "star" and leaves:
        hub = leaves[0]
        e.add(hub, hub)
        for o in leaves[1:]:
            e.add(o, o)
            e.add(hub, o)
            e.add(o, hub)


def _array(e: _Edges, child: _Child, policy: str) -> None:
    cs = [p for p, _, _ in child.elements]
    n = len(cs)
    if policy in ("dense", "matched_fields") and n > 1:
        pairs = n * (n - 1)
        if policy == "matched_fields":  # at most: every field of one element to its match in each other
            pairs += (n - 1) * sum(len(sub.leaves) for _, _, sub in child.elements)
        e.reserve(e.count(pairs),
                  f"{e.where}: ConnectivityPolicy(array_element={policy!r}) connects each of the {n:,} elements "
                  f"of the list {cs[0].rsplit('[', 1)[0]!r} to every other element, which",
                  "Use array_element='ring' (each element to its neighbours) or 'isolated', or fewer elements")
        for a in cs:
            for b in cs:
                if a != b:
                    e.add(a, b)
    if policy == "matched_fields":
        rel = [{leaf[len(p) + 1:]: leaf for leaf in sub.leaves} for p, _, sub in child.elements]
        for i in range(n):
            for j in range(n):
                if i != j:
                    for r, leaf in rel[i].items():
                        if r in rel[j]:
                            e.add(leaf, rel[j][r])
    elif policy == "ring" and n > 1:
        for i in range(n):
            j = (i + 1) % n
            e.add(cs[i], cs[j])
            e.add(cs[j], cs[i])


def _connect(e: _Edges, node: _Node, policy: ConnectivityPolicy) -> None:
    e.where = node.describe()
    _intra(e, node.leaves, policy.intra)
    for child in node.children:
        for coarse, _, sub in child.elements:
            e.add(coarse, coarse)
            _connect(e, sub, policy)
            e.where = node.describe()
            for leaf in sub.leaves:
                e.add(coarse, leaf)
                e.add(leaf, coarse)
            for pl in node.leaves:
                e.add(pl, coarse)
                e.add(coarse, pl)
        if child.is_list:
            _array(e, child, policy.array_element)


def wire_operator(src_family: Optional[str], dst_family: Optional[str],
                  t_src: Optional[int] = None, t_dst: Optional[int] = None) -> str:
    """The operator auto-wiring puts on a connection between fields of the given *declared*
    families (None = not declared): ``DEFAULT_WIRING[(src, dst)]``, and ``"attend"`` when either
    family is undeclared or the pair is not in the table -- canvas-engineering's rule, on every
    connection whatever its frame offsets (``t_src`` / ``t_dst`` are accepted and do not change
    the label; ``integrate`` / ``intervene`` name the intent of a state-to-state or
    action-to-state link)."""
    if src_family is None or dst_family is None:
        return "attend"
    return DEFAULT_WIRING.get((src_family, dst_family), "attend")
