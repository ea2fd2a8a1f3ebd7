"""Keeping a clock expression a shallow tree: no cycle, at most ``MAX_DEPTH`` levels.

A node's children are its ``child`` / ``left`` / ``right`` attributes.  They can be reassigned
after construction, top-down (``cur.child = Not(...)`` in a loop) or into a cycle
(``a.left = a``), and a node does not know its parents, so a change deep inside cannot update
the depth recorded at the root.  Instead every link assignment to a node that was already
checked starts a new *generation*, and the first ``evaluate`` / ``to_dict`` / hash / repr of a
combinator in a generation walks its tree once, iteratively, before any recursion: a cycle or
an over-deep tree is a ``ProgramError`` instead of a ``RecursionError``.  Nodes that pass are
marked with the generation, so later calls cost one comparison.  The walk also records each
node's expanded size (``_size``: its node count written out as a tree, as ``to_dict`` would).

A tree may share nodes (``x = And(x, x)`` in a loop doubles the expanded size per level with one
new node each), so everything here is linear in the *distinct* nodes: the walk visits each once,
:func:`evaluate_shared` asks each once per call, and :func:`dict_shape` measures a dict reached
twice once.  What can only be written out in full (``to_dict``, building from a dict) is refused
past ``MAX_NODES`` before anything is allocated; ``==``, ``hash`` and ``repr`` of a tree that large
compare it pair by pair (:func:`same_tree`), hash its shape, and abbreviate it.  Loading a checked
dict node by node is :func:`load_node`.

Invariant: a node marked with the current generation has only marked descendants, since the
walk marks every node it passes and any later link change to a marked node starts a new
generation.  So a link change to an unmarked node (one still being built) needs no new one.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

from canvas_core.errors import CanvasTypeError, ProgramError, SchemaError, SchemaFormatError

__all__ = ["MAX_DEPTH", "MAX_NODES", "LINKS", "set_link", "link_changed", "is_sound", "check_tree", "check_dict_shape", "dict_shape",
           "evaluate_shared", "load_node", "same_tree", "too_many"]

#: deepest nesting of a clock expression (far beyond any hand-written clock)
MAX_DEPTH = 200
#: most nodes of a clock expression written out as a tree (``to_dict``, ``from_dict``); each
#: shared node counts once per place it appears
MAX_NODES = 100_000
#: the attributes that hold a node's children
LINKS = ("child", "left", "right")

_generation: List[object] = [object()]  # a fresh token per generation (not a number: a copy never matches)


def set_link(node: Any, name: str, value: Any, kind: type) -> None:
    """Store the node ``value`` as ``node``'s child ``name`` (one of ``LINKS``; ``kind``: the node base
    class).  A node as its own
    child, or a tree deeper than ``MAX_DEPTH`` as far as the nodes below know it, is a ``ProgramError``
    now; a longer cycle or a depth only a parent could see is refused at the next use (above)."""
    where = f"{type(node).__name__}.{name}"
    if value is node:
        raise ProgramError(f"{where}: a clock node cannot be its own {name} (a cycle: evaluating it would "
                           "never end); assign another node")
    others = (node.__dict__.get(k) for k in LINKS if k != name)
    level = 1 + max([value._level] + [v._level for v in others if isinstance(v, kind)])
    if level > MAX_DEPTH:
        raise ProgramError(f"{where}: this clock expression would be nested more than {MAX_DEPTH} levels "
                           "deep (as from a loop of `clock = clock & other`); flatten it (combine the leaves "
                           "in a balanced tree, or use fewer nodes)")
    object.__setattr__(node, name, value)
    object.__setattr__(node, "_level", level)
    link_changed(node)


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
    node base class; each node's ``_level`` becomes the height of its tree (leaves: 1) and its
    ``_size`` the node count of its tree written out (a shared node once per place)."""
    token = _generation[0]
    height: Dict[int, int] = {}
    size: Dict[int, int] = {}
    open_ids = {id(root)}
    stack = [(root, _children(root, kind), 0)]  # (node, its children, next child to visit)
    while stack:
        node, kids, i = stack[-1]
        if i == len(kids):
            stack.pop()
            open_ids.discard(id(node))
            level = 1 + max((height[id(v)] for _, v in kids), default=0)
            height[id(node)] = level
            size[id(node)] = 1 + sum(size[id(v)] for _, v in kids)
            object.__setattr__(node, "_level", level)
            object.__setattr__(node, "_size", size[id(node)])
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
            size.setdefault(id(child), child.__dict__.get("_size", 1))
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


def evaluate_shared(root: Any, ctx: Any, shared: Callable) -> Any:
    """``root.evaluate(ctx)`` with each node of its tree asked once, however often it is shared.

    A node whose class's ``evaluate`` is ``shared`` (the built-in combinators' method), and the
    root itself, are combined here: ``node._inputs(ctx)`` lists the children it needs (in the
    order the recursive rule asked them) and ``node._combine(ctx, values)`` gives its answer from
    theirs.  Any other node (a leaf, a custom node) is asked through its own ``evaluate``.
    Iterative, left child first, so custom nodes are asked in the order the recursion asked them;
    the tree must be sound (no cycle), which the caller checks first."""
    values: Dict[int, Any] = {}
    stack = [root]
    while stack:
        node = stack[-1]
        if id(node) in values:
            stack.pop()
            continue
        if node is not root and type(node).evaluate is not shared:
            values[id(node)] = node.evaluate(ctx)
            stack.pop()
            continue
        inputs = node._inputs(ctx)
        pending: Dict[int, Any] = {}
        for child in inputs:
            if id(child) not in values:
                pending.setdefault(id(child), child)
        if pending:
            stack.extend(reversed(list(pending.values())))  # left on top
            continue
        values[id(node)] = node._combine(ctx, [values[id(c)] for c in inputs])
        stack.pop()
    return values[id(root)]


def same_tree(a: Any, b: Any, kind: type) -> bool:
    """Whether two sound trees are equal node for node (the same classes, the same fields, equal
    children), each pair of nodes compared once however often it is shared.  A node without
    children is compared by its ``to_dict()`` (which may raise ``ClockNotSerializableError``)."""
    seen = set()
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if x is y or (id(x), id(y)) in seen:
            continue
        seen.add((id(x), id(y)))
        kx, ky = _children(x, kind), _children(y, kind)
        if type(x) is not type(y) or [k for k, _ in kx] != [k for k, _ in ky]:
            return False
        if not kx:
            if x.to_dict() != y.to_dict():
                return False
            continue
        if any(getattr(x, k) != getattr(y, k) for k in x._keys if k not in LINKS):
            return False
        stack.extend((u, v) for (_, u), (_, v) in zip(kx, ky))
    return True


def too_many(what: str, size: int, cls: type) -> Exception:
    """The error for writing out (``to_dict``) or reading (``from_dict``, ``cls``) a clock of ``size`` nodes."""
    return cls(f"{what}: this clock expression has {size:,} nodes written out (a node or dict reused inside "
               f"it, as in a loop of `clock = clock & clock`, counts at each place), more than "
               f"clock_ir.MAX_NODES={MAX_NODES:,}; the dict format cannot share nodes, so build a smaller clock "
               "(one this large is almost certainly generated by mistake)")


def dict_shape(d: Any) -> Tuple[int, int]:
    """``(depth, size)`` of a clock dict: its nesting depth and its node count, a dict reached
    along two paths counted on each (the tree it describes).  Iterative and measured once per dict
    object, so neither a deep nor a self-sharing dict costs more than its distinct dicts; past
    ``MAX_DEPTH`` (a cycle is endless) it stops and returns ``(MAX_DEPTH + 1, 0)``."""
    shape: Dict[int, Tuple[int, int]] = {}
    stack = [(d, _dict_children(d))]
    while stack:
        node, kids = stack[-1]
        todo = next((k for k in kids if id(k) not in shape), None)
        if todo is not None:
            if len(stack) >= MAX_DEPTH:
                return MAX_DEPTH + 1, 0
            stack.append((todo, _dict_children(todo)))
            continue
        stack.pop()
        parts = [shape[id(k)] for k in kids]
        shape[id(node)] = (1 + max((p[0] for p in parts), default=0), 1 + sum(p[1] for p in parts))
    return shape[id(d)]


def check_dict_shape(d: Any, what: str) -> None:
    """Refuse (``SchemaFormatError``, naming ``what``) a clock dict nested past ``MAX_DEPTH`` or
    describing more than ``MAX_NODES`` nodes, before any node is built."""
    depth, size = dict_shape(d) if isinstance(d, dict) else (1, 1)
    if depth > MAX_DEPTH:
        raise SchemaFormatError(f"clock expression is nested more than {MAX_DEPTH} levels deep; "
                                "flatten it (a clock this deep is almost certainly generated by mistake)")
    if size > MAX_NODES:
        raise too_many(what, size, SchemaFormatError)


def _dict_children(d: Any) -> List[dict]:
    return [d[key] for key in LINKS if isinstance(d.get(key), dict)] if isinstance(d, dict) else []


def load_node(d: Any, node_types: Dict[str, Any]) -> Any:
    """The node ``d`` describes (its ``"type"`` key picks the class in ``node_types``), built by the
    class's ``_from``, which loads the children; each malformed part is a ``SchemaFormatError``."""
    if not isinstance(d, dict):
        raise SchemaFormatError(
            f"clock expression must be a dict with a 'type' key, got {type(d).__name__} {d!r:.120}")
    kind = d.get("type")
    node = node_types.get(kind) if isinstance(kind, str) else None
    if node is None:
        raise SchemaFormatError(
            f"clock expression {d!r:.120}: unknown type {kind!r} (Unknown ClockExpr type: {kind!r}); "
            f"expected one of {sorted(node_types)}")
    allowed = {"type", *node._keys}
    extra = set(d) - allowed
    if extra:
        raise SchemaFormatError(f"clock expression {d!r:.120}: unknown keys {sorted(extra)} for type "
                                f"{kind!r} (allowed: {sorted(allowed)})")
    missing = [k for k in node._required if k not in d]
    if missing:
        raise SchemaFormatError(f"clock expression {d!r:.120}: type {kind!r} needs keys {missing}")
    try:
        return node._from(d)
    except SchemaFormatError:
        raise
    except (CanvasTypeError, SchemaError) as exc:
        raise SchemaFormatError(f"clock expression {d!r:.120}: {exc}") from None
