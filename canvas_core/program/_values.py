"""How the declaration walk of :mod:`canvas_core.program._tree` reads single values: whether a value
is a nested object to walk (:func:`_is_composite`, :func:`_holds_fields`), a dataclass's items as
canvas-engineering reads them, the elements of a dict / set / deque the walk does not enter,
whether an annotation is a ``ClassVar``, and how a value holding Fields is named in a warning.
No state of the walk: each function looks at the value it is given."""

from __future__ import annotations

import collections
import dataclasses
import typing
from typing import Any, Dict, Iterator, List, Optional, Tuple

from canvas_core.program._attrs import _has_slots, _is_leaf, _is_pydantic, _is_sequence, _plain_attributes
from canvas_core.program.fields import Field


def _is_composite(value: Any, memo: Optional[Dict[int, Tuple[Any, bool]]] = None) -> bool:
    """Whether ``value`` is a nested object to walk; ``memo``: see :func:`_holds_fields`."""
    if _is_leaf(value):
        return False
    if dataclasses.is_dataclass(value) or _is_pydantic(value):
        return True
    return _holds_fields(value, memo)


def _holds_fields(obj: Any, memo: Optional[Dict[int, Tuple[Any, bool]]] = None) -> bool:
    """Whether a plain object holds a ``Field`` at any depth: in an attribute, a list or tuple of
    them, a dataclass / pydantic model (which counts as holding one), or another plain object.
    Looking one level down only dropped ``robot.arm.gripper.force`` from the canvas without a word.
    Iterative, each object entered once: a long chain of helper objects is no deep nesting.

    ``memo`` (one per walk: ``id -> (object, answer)``, the object kept so that its id is not
    reused) records the answer for every plain object the search passed through: True for those on
    the way to what was found, False for all of them when nothing was.  The walk asks this of
    every nested object, so without it a chain of N nested objects costs O(N^2)."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)][1]
    seen = {id(obj)}
    entered: Dict[int, Tuple[Any, Optional[int]]] = {id(obj): (obj, None)}  # plain object -> (it, holder)
    todo = [(x, id(obj)) for _, x, _ in _plain_attributes(obj)]
    while todo:
        v, up = todo.pop()
        if isinstance(v, Field):
            return _found(memo, entered, up)
        if _is_leaf(v) or id(v) in seen:
            continue
        known = memo.get(id(v))
        if known is not None:  # a plain object answered before: True ends it, False adds nothing
            if known[1]:
                return _found(memo, entered, up)
            continue
        seen.add(id(v))
        if isinstance(v, (list, tuple)):
            todo.extend((x, up) for x in v)  # a list is no memo entry: its holder is
        elif dataclasses.is_dataclass(v) or _is_pydantic(v):
            return _found(memo, entered, up)
        elif hasattr(v, "__dict__") or _has_slots(v):
            entered[id(v)] = (v, up)
            todo.extend((x, id(v)) for _, x, _ in _plain_attributes(v))
    for k, (o, _) in entered.items():  # everything each of them reaches was searched
        memo[k] = (o, False)
    return False


def _found(memo: Dict[int, Tuple[Any, bool]], entered: Dict[int, Tuple[Any, Optional[int]]], at: Optional[int]) -> bool:
    """Record True for the plain object ``at`` and every one the search went through to reach it."""
    while at is not None:
        o, up = entered[at]
        memo[at] = (o, True)
        at = up
    return True


def _dataclass_items(obj: Any) -> List[Tuple[str, Any, dict]]:
    """A dataclass's attributes as canvas-engineering reads them: every entry of
    ``__dataclass_fields__`` in declaration order, ``ClassVar`` / ``InitVar``-annotated ones
    included (their class-level Field is a region, as there)."""
    items = []
    for f in obj.__dataclass_fields__.values():
        value = getattr(obj, f.name, None)
        if f._field_type is getattr(dataclasses, "_FIELD_CLASSVAR", None) and isinstance(value, type(obj)):
            continue  # a default / singleton instance kept on the class (`default: ClassVar[Robot]`)
        items.append((f.name, value, dict(f.metadata)))
    return items


def _elements(value: Any) -> Iterator[Any]:
    """The elements of a dict (its values), set, frozenset or deque, or of a subclass of one, read
    through the builtin's own methods, so no method a subclass overrides runs."""
    if isinstance(value, dict):
        return iter(dict.values(value))
    if isinstance(value, set):
        return set.__iter__(value)
    if isinstance(value, frozenset):
        return frozenset.__iter__(value)
    return collections.deque.__iter__(value)


def _describe(v: Any) -> str:
    if isinstance(v, Field):
        return "a Field"
    return "a list holding Fields" if _is_sequence(v) else f"an object ({type(v).__name__}) holding Fields"


def _is_classvar(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return annotation.replace(" ", "").startswith(("ClassVar", "typing.ClassVar"))
    return annotation is typing.ClassVar or typing.get_origin(annotation) is typing.ClassVar
