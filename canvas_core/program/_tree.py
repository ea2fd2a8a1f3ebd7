"""Walking a declaration's object tree into region paths (the first step of ``compile_schema``).

Dataclasses, pydantic models and plain objects are walked alike; nested objects and lists of
them become subtrees, each with a coarse region at its own path.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field as dc_field
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

from canvas_core.errors import CanvasTypeError, ProgramError, SizeLimitError
from canvas_core.program._attrs import (_class_declarations, _has_slots, _is_leaf, _is_pydantic, _is_sequence,  # noqa: F401
                                        _plain_attributes, _shadowed_slots)
from canvas_core.program._values import _dataclass_items, _describe, _elements, _is_classvar, _is_composite
from canvas_core.program._values import _holds_fields  # noqa: F401 - importable from here as before
from canvas_core.program.fields import Field
from canvas_core.schema._validate import check_name
from canvas_core.schema.limits import LIMITS, limit

_RESERVED = re.compile(r"[.\[\]]")
#: containers the walk does not enter, a Field in one warned about (see _Walker.unwalked): these
#: builtin types and their subclasses, whose elements are read through the builtin's own methods
#: (no user code runs); another Mapping is not read
_UNWALKED = (dict, set, frozenset, collections.deque)
#: how many objects, in all, one walk looks at inside such containers for Fields (elements and
#: what they hold, at any depth)
_SCAN_CAP = 10_000


# --- the object tree ---------------------------------------------------------------------------
@dataclass
class _Node:
    path: str                                    # "" for the root
    leaves: List[str] = dc_field(default_factory=list)
    children: List["_Child"] = dc_field(default_factory=list)
    owner: str = ""                              # the type name of the object at this path
    sizes: Optional[Tuple[int, int]] = None     # the walker's sizes() of the subtree, once asked

    def describe(self) -> str:
        """The object in an error message: ``Arm at 'robot.arm'`` or ``Robot (the root object)``."""
        return f"{self.owner} at {self.path!r}" if self.path else f"{self.owner} (the root object)"

    def has_fields(self) -> bool:
        return bool(self.leaves) or any(c.elements for c in self.children)


@dataclass
class _Child:
    is_list: bool
    elements: List[Tuple[str, Field, _Node]]     # (coarse path, coarse field, subtree)


class _Walker:
    def __init__(self, coarse_default: Field, root: Any = None) -> None:
        self.coarse_default = coarse_default     # the coarse region of a subtree without a template
        self.fields: Dict[str, Field] = {}       # leaf path -> Field (coarse ones added later)
        self.n_regions = 0                       # leaves and coarse regions so far
        self.max_regions = limit("regions")
        self.root = root                         # what known() starts from
        self._known: Optional[Tuple[Set[int], Set[int]]] = None
        self._held: Optional[Set[int]] = None   # see aliases()
        self.scan_left = [_SCAN_CAP]             # objects unwalked() may still look at
        self.holds: Dict[int, Tuple[Any, bool]] = {}  # _holds_fields answers (one search per object)
        self.open: Set[int] = set()              # the objects on the path being walked

    def known(self) -> Tuple[Set[int], Set[int]]:
        """The ids of the Fields and of the objects the walk reaches from the root through declared
        attributes (computed on first use: most trees never need it)."""
        if self._known is None:
            self._known = _reachable(self.root)
        return self._known

    def aliases(self, obj: Any, value: Any) -> Set[int]:
        """Ids of a plain object's list's Fields when it only aliases attribute Fields of the tree
        (``self.all = [self.a, self.b]``; canvas-engineering drops lists of bare Fields). A list with a
        Field of its own, or one twice (``[f] * 3``), keeps all: dropping some would renumber the rest."""
        ids = Counter(id(v) for v in value if isinstance(v, Field))
        if not ids or dataclasses.is_dataclass(obj) or _is_pydantic(obj):  # a declared field is meant
            return set()
        self._held = _attribute_fields(self.root) if self._held is None else self._held
        return set(ids) if all(n == 1 and i in self._held for i, n in ids.items()) else set()

    def count(self, path: str, owner: str) -> None:
        """Refuse the tree as soon as it holds more regions than a layout may have."""
        self.n_regions += 1
        if self.n_regions > self.max_regions:
            var = LIMITS["regions"][0]
            raise SizeLimitError(
                f"{owner}: the object tree makes more than {self.max_regions:,} regions (the limit on the "
                f"regions of one layout, reached at {path!r}; every Field and every nested object or list "
                "element with fields is a region); refused before placing or connecting them. Declare "
                "fewer, larger fields (one Field(h, w) or Field(spatial_shape=...) covers many positions), "
                f"or raise the limit with {var}=<n> if the machine really has room for it")

    def leaf(self, path: str, f: Field, owner: str) -> None:
        if path in self.fields:
            raise ProgramError(f"{owner}: two fields compile to the same region name {path!r}; rename one of them")
        self.count(path, owner)
        self.fields[path] = f

    def unwalked(self, path: str, value: Any, owner: str) -> None:
        """Warn about a dict, set or deque holding Fields the walk does not reach otherwise: only
        Fields, lists / tuples and objects are walked (as in canvas-engineering), so they stay off.
        At most :data:`_SCAN_CAP` objects are looked at in all such containers of the tree, at
        any depth (a big buffer of data is no canvas type), tensors and arrays not entered."""
        if self.scan_left[0] <= 0:
            return
        try:
            held = list(itertools.islice(_elements(value), self.scan_left[0]))
        except Exception:  # changed while read: nothing to warn about
            return
        first, second = [self.scan_left[0] + 1], [self.scan_left[0] + 1]  # +1: `held` itself is free
        found = _holds_deep(held, first) and _adds_fields(held, self.known(), second)
        self.scan_left[0] = min(first[0], second[0])  # two passes, each object charged once
        if found:
            _warn_off_canvas(
                f"{owner}: {path} is a {type(value).__name__} holding Fields; only Fields, lists / tuples of them "
                "and objects with Fields are walked, so they are left off the canvas (as canvas-engineering "
                "leaves them). To make them regions, use a list or an object with one attribute per Field")

    def walk(self, obj: Any, prefix: str) -> _Node:
        if id(obj) in self.open:
            raise ProgramError(
                f"the object tree refers back to itself at {prefix.rstrip('.') or 'the root'!r} "
                f"({type(obj).__name__}); a canvas type must be a tree, not a cycle"
            )
        self.open.add(id(obj))  # a set, not a tuple copied per level: O(1) per nested object
        try:
            return self._walk(obj, prefix)
        finally:
            self.open.discard(id(obj))

    def _walk(self, obj: Any, prefix: str) -> _Node:
        owner = type(obj).__name__
        node = _Node(prefix.rstrip("."), owner=owner)
        attrs = _attributes(obj, self.known)
        for name, value, _meta in attrs:
            if isinstance(value, Field):
                self.leaf(f"{prefix}{name}", value, owner)
                node.leaves.append(f"{prefix}{name}")
            elif _is_sequence(value):
                _check_mixed_list(f"{prefix}{name}", value, owner)
                aliases = self.aliases(obj, value)
                for i, v in enumerate(value):
                    if isinstance(v, Field) and id(v) not in aliases:
                        self.leaf(f"{prefix}{name}[{i}]", v, owner)
                        node.leaves.append(f"{prefix}{name}[{i}]")
            elif isinstance(value, _UNWALKED):
                self.unwalked(f"{prefix}{name}", value, owner)
        # Nested objects first, then lists of objects (each in declaration order), as in
        # canvas-engineering: this fixes the region order, hence placement and connection order.
        for name, value, meta in attrs:
            if not isinstance(value, Field) and not _is_sequence(value) and _is_composite(value, self.holds):
                path = f"{prefix}{name}"
                sub = self.walk(value, path + ".")
                if sub.has_fields():
                    node.children.append(_Child(False, [(path, self.coarse(value, meta, path, sub), sub)]))
        for name, value, meta in attrs:
            if _is_sequence(value):
                elements = []
                for i, v in enumerate(value):
                    if _is_composite(v, self.holds):
                        path = f"{prefix}{name}[{i}]"
                        sub = self.walk(v, path + ".")
                        if sub.has_fields():
                            elements.append((path, self.coarse(v, meta, path, sub), sub))
                if elements:
                    node.children.append(_Child(True, elements))
        return node

    def coarse(self, value: Any, meta: dict, path: str, sub: "_Node") -> Field:
        """The coarse-grained field of a nested object. Its period, unless the template sets one
        (!= 1), is the mean period of all fields below it (nested coarse ones included) weighted by
        ``h * w``, rounded (canvas-engineering's rule: the summary follows the dominant
        timescale of the subtree)."""
        self.count(path, type(value).__name__)
        c = _coarse_field(value, meta, path, self.coarse_default)
        if c.period != 1:
            return c
        total, weighted = self.sizes(sub)
        if not total:
            return c
        period = max(1, round(weighted / total))
        return c if period == 1 else dataclasses.replace(c, period=period)

    def sizes(self, node: "_Node") -> Tuple[int, int]:
        """``(sum of h * w, sum of period * h * w)`` over every field below ``node`` (its leaves,
        and each nested object's coarse field and what is below it).  Kept on the node: the coarse
        field of every level of a chain of N nested objects summed all of the chain below it, O(N^2).
        Integer sums, so the order they are added in does not matter."""
        if node.sizes is None:
            leaves = [self.fields[leaf] for leaf in node.leaves]
            total, weighted = sum(f.h * f.w for f in leaves), sum(f.period * f.h * f.w for f in leaves)
            for child in node.children:
                for _, f, s in child.elements:
                    below = self.sizes(s)  # computed when s's own coarse field was made
                    total += f.h * f.w + below[0]
                    weighted += f.period * f.h * f.w + below[1]
            node.sizes = (total, weighted)
        return node.sizes


def _check_mixed_list(path: str, value: Any, owner: str) -> None:
    """A list holding Fields / nested objects must hold nothing else (it would be silently dropped);
    a list inside it that holds Fields is dropped with a warning (canvas-engineering drops it silently)."""
    for i, v in enumerate(value):
        if _is_sequence(v) and _holds_deep(v):
            warnings.warn(
                f"{owner}: {path}[{i}] is a {type(v).__name__} inside the list {path!r} and holds Fields; lists "
                "of lists are not walked, so those Fields are left off the canvas (as canvas-engineering leaves "
                "them). Flatten the list, or make each inner list an attribute of an object (a list of those "
                "objects is walked)", UserWarning, stacklevel=2)
    kinds = [isinstance(v, Field) or _is_composite(v) for v in value]
    if any(kinds) and not all(kinds):
        i = kinds.index(False)
        raise ProgramError(
            f"{owner}: {path}[{i}] is {value[i]!r:.80} ({type(value[i]).__name__}), but the other elements of "
            f"{path!r} are Fields / nested objects; a list of canvas fields can hold only Fields or "
            "objects with Fields. Remove that element or move it to a separate attribute"
        )
    _check_fields_and_objects(path, value, owner)


def _check_fields_and_objects(path: str, value: Any, owner: str) -> None:
    """A list is either bare Fields or objects with Fields, never both: the two are walked as
    different things (a bare Field is a region of the list's owner, an object a list element with
    its own coarse summary), so a mix would be split, wired and ordered unlike the list."""
    is_field = [isinstance(v, Field) for v in value]
    if all(is_field) or not any(is_field):
        return
    i, j = sorted((is_field.index(False), is_field.index(True)))

    def kind(v: Any) -> str:
        return "a bare Field" if isinstance(v, Field) else f"a {type(v).__name__} object"

    raise ProgramError(
        f"{owner}: {path}[{j}] is {kind(value[j])}, but {path}[{i}] is {kind(value[i])}; the list {path!r} "
        "mixes bare Fields and objects with Fields, which are not elements of the same kind (a bare Field "
        f"would become a region of {owner}, not a list element). Wrap each bare Field in an object like "
        "the others, or move the bare Fields to a separate attribute"
    )


def _declared(obj: Any, classes: Optional[dict] = None) -> List[Any]:
    """The attribute values of ``obj`` that the walk reads (``classes``: see _plain_attributes)."""
    if dataclasses.is_dataclass(obj):
        return [v for _, v, _ in _dataclass_items(obj)]
    if _is_pydantic(obj):
        return [getattr(obj, n, None) for n in type(obj).model_fields]
    return [v for _, v, _ in _plain_attributes(obj, classes)]


def _reachable(root: Any) -> Tuple[Set[int], Set[int]]:
    """The ids of every Field and every object reachable from ``root`` through declared attributes
    and list elements (not lists inside lists, which the walk does not enter)."""
    fields: Set[int] = set()
    objs: Set[int] = set()
    todo = [root]
    while todo:
        v = todo.pop()
        if isinstance(v, Field):
            fields.add(id(v))
        elif isinstance(v, (list, tuple)):
            todo.extend(x for x in v if not isinstance(x, (list, tuple)) or isinstance(x, Field))
        elif not _is_leaf(v) and id(v) not in objs:
            objs.add(id(v))
            todo.extend(_declared(v))
    return fields, objs


def _attribute_fields(root: Any) -> Set[int]:
    """The ids of the Fields that are the value of an attribute (not a list element) of an object
    reachable from ``root`` through declared attributes and list elements."""
    held: Set[int] = set()
    objs: Set[int] = set()
    todo = [root]
    while todo:
        v = todo.pop()
        if isinstance(v, (list, tuple)):
            todo.extend(x for x in v if not isinstance(x, (list, tuple, Field)))
        elif not _is_leaf(v) and id(v) not in objs:
            objs.add(id(v))
            values = _declared(v)
            held.update(id(x) for x in values if isinstance(x, Field))
            todo.extend(x for x in values if not isinstance(x, Field))
    return held


def _found_fields(value: Any, skip: Set[int] = frozenset(), budget: Optional[List[int]] = None
                  ) -> Iterator[Field]:
    """Every Field ``value`` holds at any depth: in lists, dataclasses (instance attributes too),
    models and plain objects.  Iterative, each object entered once; objects in ``skip`` are not
    entered.  ``budget``: a one-element list counting down the objects still to look at (none
    when it reaches 0), shared by the caller's searches."""
    seen = set(skip)
    classes: dict = {}  # each class's declarations read once
    todo = [value]  # a stack, children pushed in reverse: in order, depth first (bounded queue)
    while todo:
        if budget is not None:
            if budget[0] <= 0:
                return
            budget[0] -= 1
        v = todo.pop()
        if isinstance(v, Field):
            yield v
        elif not _is_leaf(v) and id(v) not in seen:
            seen.add(id(v))
            if isinstance(v, (list, tuple)):
                todo.extend(reversed(v))
            elif dataclasses.is_dataclass(v):
                todo.extend(reversed(_declared(v) + list(getattr(v, "__dict__", {}).values())))
            else:
                todo.extend(reversed(_declared(v, classes)))


def _holds_deep(value: Any, budget: Optional[List[int]] = None) -> bool:
    """Whether ``value`` holds a Field at any depth (dataclasses and models looked into too;
    ``budget``: see _found_fields)."""
    return next(_found_fields(value, budget=budget), None) is not None


def _adds_fields(v: Any, known: Tuple[Set[int], Set[int]], budget: Optional[List[int]] = None) -> bool:
    """Whether ``v`` holds a Field the walk does not reach anyway (an alias such as
    ``self.grip = self.arm.grip`` or ``self.main = self.cams[0]`` adds nothing)."""
    fields, objs = known
    if id(v) in objs:
        return False
    return any(id(f) not in fields for f in _found_fields(v, objs, budget))


def _warn_off_canvas(message: str) -> None:
    warnings.warn(message + "; to keep it off the canvas without this warning, give it a name starting "
                  "with '_'", UserWarning, stacklevel=2)


def _undeclared_dataclass_attributes(obj: Any, items: List[Tuple[str, Any, dict]], known: Any) -> None:
    """Check what a dataclass holds outside its fields.  canvas-engineering reads only
    ``__dataclass_fields__``, so a Field set on the instance (in ``__post_init__`` or later) or
    assigned in a class body without an annotation is left off its canvas.  Here too, with a
    warning naming it and the fix (annotating it, or declaring it as a field), so every tree
    canvas-engineering compiles compiles.  Names starting with ``_``,
    ``functools.cached_property`` values and attributes whose Fields the walk reaches anyway
    (aliases, links back up the tree) are left alone.  ``known`` returns the reachable ids."""
    klass = type(obj)
    declared = {name for name, _, _ in items}
    classvars, cached = set(), set()
    for base in klass.__mro__:
        classvars.update(k for k, a in vars(base).get("__annotations__", {}).items() if _is_classvar(a))
        cached.update(k for k, d in vars(base).items() if isinstance(d, functools.cached_property))
    inst = getattr(obj, "__dict__", None)
    for k, v in (inst.items() if isinstance(inst, dict) else ()):
        if k in declared or k in cached or (isinstance(k, str) and k.startswith("_")) \
                or not _holds_deep(v) or not _adds_fields(v, known()):
            continue
        _warn_off_canvas(
            f"{klass.__name__}.{k} is {_describe(v)} set on the instance (in __post_init__ or later), but it "
            f"is no field of the dataclass {klass.__name__}, so it is left off the canvas (as canvas-engineering "
            f"leaves it). To make it a region, declare it as a field (`{k}: "
            f"{'Field' if isinstance(v, Field) else type(v).__name__} = dataclasses.field(init=False)`, then "
            "set it in __post_init__)")
    for k, v in _class_declarations(klass):
        if k in declared or (inst is not None and k in inst) or k.startswith("_") or not _holds_deep(v) \
                or not _adds_fields(v, known()):
            continue
        what = _describe(v)
        if k in classvars:  # a ClassVar of a base class that is no dataclass: not in __dataclass_fields__
            _warn_off_canvas(
                f"{klass.__name__}.{k} is {what} annotated ClassVar in a base class that is not a dataclass, "
                f"so the dataclass {klass.__name__} does not list it and it is left off the canvas (as "
                "canvas-engineering leaves it). To make it a region, declare it in a dataclass body (`" + k +
                ": ClassVar[Field] = Field(...)`)")
            continue
        example = f"{k}: Field = Field(...)" if isinstance(v, Field) else (
            f"{k}: list = dataclasses.field(default_factory=lambda: [...])" if _is_sequence(v)
            else f"{k}: {type(v).__name__} = dataclasses.field(default_factory={type(v).__name__})")
        _warn_off_canvas(
            f"{klass.__name__}.{k} is {what} assigned without a type annotation, so the dataclass "
            f"{klass.__name__} does not count it as a field and it is left off the canvas (as "
            f"canvas-engineering leaves it). Annotate it in the class body (`{example}`) or remove it")


def _attributes(obj: Any, known: Any) -> List[Tuple[str, Any, dict]]:
    """The (name, value, metadata) triples the walk reads from ``obj``; ``known`` returns the ids
    of the Fields and objects reachable from the root."""
    if dataclasses.is_dataclass(obj):
        items = _dataclass_items(obj)
        _undeclared_dataclass_attributes(obj, items, known)
    elif _is_pydantic(obj):
        items = [(n, getattr(obj, n, None), {}) for n in type(obj).model_fields]
        for k in sorted(getattr(type(obj), "__class_vars__", ())):
            if not k.startswith("_") and _holds_deep(v := getattr(type(obj), k, None)) and _adds_fields(v, known()):
                _warn_off_canvas(
                    f"{type(obj).__name__}.{k} holds Fields but is annotated ClassVar on a pydantic model, which "
                    "is no model field, so it is left off the canvas (as canvas-engineering leaves it). To make "
                    f"it a region, declare it as a model field (`{k}: Field = Field(...)`)")
    else:
        items = _plain_attributes(obj)
        for k, v in _shadowed_slots(obj):
            if _holds_deep(v) and _adds_fields(v, known()):
                _warn_off_canvas(
                    f"{type(obj).__name__}.{k} is a __slots__ attribute holding Fields, on an object that also has a "
                    "__dict__: the walk reads the __dict__ of such an object, as canvas-engineering does, so it is "
                    f"left off the canvas (as there). To make it a region, drop {k!r} from __slots__ (it is then "
                    "stored in the __dict__), or give every class __slots__ (no __dict__: slots are walked)")
    for name, _, _ in items:
        if not isinstance(name, str):
            raise ProgramError(
                f"{type(obj).__name__}: attribute name {name!r} is of type {type(name).__name__}, not a string (put "
                "into the object's __dict__ directly); a region name is the attribute's path, so rename it")
        if _RESERVED.search(name) or not name.strip():  # blank: the path would end in '.' ('arm.')
            what = "is blank" if not name.strip() else "contains '.', '[' or ']', which separate nested field paths"
            raise ProgramError(f"{type(obj).__name__}: attribute name {name!r} {what}; rename it")
        check_name(name, f"{type(obj).__name__}: attribute name", ProgramError)  # the region name's rule
    return items


def _coarse_field(value: Any, meta: dict, path: str, default: Field) -> Field:
    c = meta.get("coarse") if meta else None
    if c is None:
        c = getattr(type(value), "__coarse__", None)
    if c is None:
        return default
    if not isinstance(c, Field):
        raise CanvasTypeError(f"coarse-grained field of {path!r} must be a Field, got {c!r}")
    return c


def _tree(root: Any, coarse_default: Field) -> Tuple[Dict[str, Field], _Node, set]:
    if isinstance(root, type):
        raise ProgramError(
            f"compile_schema/compile_program got the class {root.__name__}, not an instance; pass {root.__name__}()"
        )
    if root is None or isinstance(root, (Field, str, bytes, int, float, bool, list, tuple, dict, set)):
        raise ProgramError(
            f"compile_schema/compile_program expects a dataclass (or pydantic model / object) instance "
            f"whose attributes are Fields, got {type(root).__name__} {root!r:.60}"
        )
    w = _Walker(coarse_default, root)
    node = w.walk(root, "")
    if not node.has_fields():
        raise ProgramError(
            f"no Field attributes found in {type(root).__name__} (No Field attributes found in object "
            "tree); declare at least one, e.g. "
            "`camera: Field = Field(4, 4)` on a @dataclass"
        )
    # final region order: leaves of a node, then each child's coarse region and subtree
    ordered: Dict[str, Field] = {}
    coarse_names: set = set()

    def emit(n: _Node) -> None:
        for leaf in n.leaves:
            ordered[leaf] = w.fields[leaf]
        for child in n.children:
            for path, coarse, sub in child.elements:
                if path in ordered or path in w.fields:
                    raise ProgramError(f"two fields compile to the same region name {path!r}; rename one of them")
                ordered[path] = coarse
                coarse_names.add(path)
                emit(sub)

    emit(node)
    return ordered, node, coarse_names
