"""Connections of a compiled declaration: the ``ConnectivityPolicy`` rules and operator wiring."""

from __future__ import annotations

from typing import List, Optional, Tuple

from canvas_core.program._tree import _Child, _Node
from canvas_core.program.constants import DEFAULT_WIRING
from canvas_core.program.fields import ConnectivityPolicy

__all__ = ["wire_operator"]


# --- connectivity ------------------------------------------------------------------------------
class _Edges:
    def __init__(self, temporal: str) -> None:
        self.temporal = temporal
        self.out: List[Tuple[str, str, Optional[int], Optional[int]]] = []
        self._seen = set()

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
                self._seen.add(key)
                self.out.append(key)


def _intra(e: _Edges, leaves: List[str], policy: str) -> None:
    if policy == "dense":
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
    if policy in ("dense", "matched_fields"):
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
    _intra(e, node.leaves, policy.intra)
    for child in node.children:
        for coarse, _, sub in child.elements:
            e.add(coarse, coarse)
            _connect(e, sub, policy)
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
