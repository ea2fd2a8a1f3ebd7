"""Keeping a clock expression a shallow tree: no cycle, at most ``MAX_DEPTH`` levels.

A node's children are its ``child`` / ``left`` / ``right`` attributes.  They can be reassigned
after construction, top-down (``cur.child = Not(...)`` in a loop) or into a cycle
(``a.left = a``), and a node does not know its parents, so a change deep inside cannot update
the depth recorded at the root.  Instead every link assignment to a node that was already
checked starts a new *generation*, and the first ``evaluate`` / ``to_dict`` / hash / repr of a
combinator in a generation walks its tree once, iteratively, before any recursion: a cycle or
an over-deep tree is a ``ProgramError`` instead of a ``RecursionError``.  Nodes that pass are
marked with the generation, so later calls cost one comparison.

Invariant: a node marked with the current generation has only marked descendants, since the
walk marks every node it passes and any later link change to a marked node starts a new
generation.  So a link change to an unmarked node (one still being built) needs no new one.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from canvas_core.errors import ProgramError

__all__ = ["MAX_DEPTH", "LINKS", "link_changed", "is_sound", "check_tree", "dict_depth"]

#: deepest nesting of a clock expression (far beyond any hand-written clock)
MAX_DEPTH = 200
#: the attributes that hold a node's children
LINKS = ("child", "left", "right")

_generation: List[object] = [object()]  # a fresh token per generation (not a number: a copy never matches)


def link_changed(node: Any) -> None:
    """Record that a link of ``node`` changed: its own mark goes, and when it was checked before
    (it may sit inside checked trees) every mark goes, by starting a new generation."""
    if node.__dict__.pop("_sound", None) is not None:
        _generation[0] = object()


def is_sound(node: Any) -> bool:
    """Whether ``node``'s tree was checked in the current generation."""
    return node.__dict__.get("_sound") is _generation[0]


def _children(node: Any, kind: type) -> List[Tuple[str, Any]]:
    return [(k, v) for k in LINKS if isinstance(v := node.__dict__.get(k), kind)]


def check_tree(root: Any, kind: type, max_depth: int) -> None:
    """Walk ``root``'s tree once (each shared node once) and mark it, or raise ``ProgramError``
    naming the node where a cycle closes or the depth passes ``max_depth``.  ``kind`` is the
    node base class; each node's ``_level`` becomes the height of its tree (leaves: 1)."""
    token = _generation[0]
    height: Dict[int, int] = {}
    open_ids = {id(root)}
    stack = [(root, _children(root, kind), 0)]  # (node, its children, next child to visit)
    while stack:
        node, kids, i = stack[-1]
        if i == len(kids):
            stack.pop()
            open_ids.discard(id(node))
            level = 1 + max((height[id(v)] for _, v in kids), default=0)
            height[id(node)] = level
            object.__setattr__(node, "_level", level)
            object.__setattr__(node, "_sound", token)
            continue
        stack[-1] = (node, kids, i + 1)
        name, child = kids[i]
        where = f"{type(node).__name__}.{name}"
        if id(child) in open_ids:
            raise ProgramError(
                f"{where}: this clock expression refers back to a {type(child).__name__} node that contains "
                f"{'it' if child is not node else 'itself'}; a clock must be a tree without cycles. Assign a new "
                "node (e.g. And(p, q)) instead of one of the node's own ancestors")
        below = child.__dict__.get("_level", 1) if is_sound(child) else height.get(id(child))
        if below is not None:  # checked already: only its height matters here
            height.setdefault(id(child), below)
            if len(stack) + below > max_depth:
                raise _too_deep(where, max_depth)
            continue
        if len(stack) + 1 > max_depth:
            raise _too_deep(where, max_depth)
        open_ids.add(id(child))
        stack.append((child, _children(child, kind), 0))


def _too_deep(where: str, max_depth: int) -> ProgramError:
    return ProgramError(
        f"{where}: this clock expression is nested more than {max_depth} levels deep (as from a loop of "
        "`node.child = Not(...)` or `clock = clock & other`); flatten it (combine the leaves in a balanced "
        "tree, or use fewer nodes)")


def dict_depth(d: Any) -> int:
    """Nesting depth of a clock dict (iterative, so a hostile dict cannot blow the stack); stops
    counting past ``MAX_DEPTH``."""
    best, stack = 0, [(d, 1)]
    while stack:
        node, k = stack.pop()
        best = max(best, k)
        if k > MAX_DEPTH:
            return k
        if isinstance(node, dict):
            stack.extend((node[key], k + 1) for key in LINKS if isinstance(node.get(key), dict))
    return best
