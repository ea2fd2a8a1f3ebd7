"""How the declaration walk of :mod:`canvas_core.program._tree` reads single values: whether a value
is a nested object to walk (:func:`_is_composite`, :func:`_holds_fields`), a dataclass's items as
canvas-engineering reads them, the elements of a dict / set / deque the walk does not enter,
whether an annotation is a ``ClassVar``, and how a value holding Fields is named in a warning.
No state of the walk: each function looks at the value it is given."""

from __future__ import annotations

import collections
import dataclasses
import typing
from typing import Any, Iterator, List, Tuple

from canvas_core.program._attrs import _has_slots, _is_leaf, _is_pydantic, _is_sequence, _plain_attributes
from canvas_core.program.fields import Field


def _is_composite(value: Any) -> bool:
    if _is_leaf(value):
        return False
    if dataclasses.is_dataclass(value) or _is_pydantic(value):
        return True
    return _holds_fields(value)


def _holds_fields(obj: Any) -> bool:
    """Whether a plain object holds a ``Field`` at any depth: in an attribute, a list or tuple of
    them, a dataclass / pydantic model (which counts as holding one), or another plain object.
    Looking one level down only dropped ``robot.arm.gripper.force`` from the canvas without a word.
    Iterative, each object entered once: a long chain of helper objects is no deep nesting."""
    seen = {id(obj)}
    todo = [x for _, x, _ in _plain_attributes(obj)]
    while todo:
        v = todo.pop()
        if isinstance(v, Field):
            return True
        if _is_leaf(v) or id(v) in seen:
            continue
        seen.add(id(v))
        if isinstance(v, (list, tuple)):
            todo.extend(v)
        elif dataclasses.is_dataclass(v) or _is_pydantic(v):
            return True
        elif hasattr(v, "__dict__") or _has_slots(v):
            todo.extend(x for _, x, _ in _plain_attributes(v))
    return False


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
