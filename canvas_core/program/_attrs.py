"""Which attributes of a plain object the program walk reads (instance ``__dict__``, ``__slots__``
and class-body declarations); the walk itself is in :mod:`canvas_core.program._tree`."""

from __future__ import annotations

import dataclasses
import sys
import types
from typing import Any, Dict, List, Optional, Tuple

from canvas_core.program.fields import Field

#: values that are never walked into (a Field is a leaf of its own)
_LEAVES = (type, Field, str, bytes, int, float, bool, dict, set, frozenset)


def _is_array(value: Any) -> bool:
    """A tensor or an ndarray: data, never a holder of Fields (its class declares hundreds of
    attributes, so looking into one is slow).  Read from ``sys.modules``: none exists unless its
    library was imported."""
    torch, numpy = sys.modules.get("torch"), sys.modules.get("numpy")
    return (torch is not None and isinstance(value, torch.Tensor)) or \
        (numpy is not None and isinstance(value, numpy.ndarray))


def _is_leaf(value: Any) -> bool:
    """A value that is never walked into: None, a :data:`_LEAVES` instance, a tensor, an array."""
    return value is None or isinstance(value, _LEAVES) or _is_array(value)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and not isinstance(value, Field)


def _is_pydantic(value: Any) -> bool:
    return not isinstance(value, type) and hasattr(type(value), "model_fields") and hasattr(value, "model_dump")


def _slot_items(obj: Any) -> List[Tuple[str, Any]]:
    """The public ``__slots__`` entries set on ``obj`` (base classes first, each in declaration
    order), read through the slot itself so a property of the same name in a subclass is not
    called.  An unset slot is left out, as an attribute never assigned would be."""
    out: List[Tuple[str, Any]] = []
    for base in reversed(type(obj).__mro__):
        slots = vars(base).get("__slots__", ())
        for k in (slots,) if isinstance(slots, str) else slots:
            slot = vars(base).get(k) if isinstance(k, str) and not k.startswith("_") else None
            if isinstance(slot, types.MemberDescriptorType):
                try:
                    out.append((k, slot.__get__(obj, type(obj))))
                except AttributeError:  # declared but never assigned
                    pass
    return out


def _has_slots(obj: Any) -> bool:
    return any("__slots__" in vars(base) for base in type(obj).__mro__[:-1])


def _instance_dict(obj: Any) -> Optional[dict]:
    inst = getattr(obj, "__dict__", None)
    return inst if isinstance(inst, dict) else None


def _shadowed_slots(obj: Any) -> List[Tuple[str, Any]]:
    """The set public ``__slots__`` entries of an object that also has a ``__dict__``: the walk
    leaves them off, as canvas-engineering (which reads ``__dict__`` only) does (the caller warns)."""
    return _slot_items(obj) if _instance_dict(obj) is not None and _has_slots(obj) else []


def _plain_attributes(obj: Any, classes: Optional[Dict[type, List[Tuple[str, Any]]]] = None
                      ) -> List[Tuple[str, Any, dict]]:
    """A plain object's attributes: its instance ``__dict__`` (or, for an object without one, its
    ``__slots__`` values), then what its classes declare in their bodies (base classes first) and
    the instance does not override; names starting with ``_`` are private and left out, as
    canvas-engineering leaves them out.  The slots of an object *with* a ``__dict__`` are left out
    too (canvas-engineering's layout; see :func:`_shadowed_slots`).  ``classes``: a cache of
    :func:`_class_declarations` per type, for a caller reading many objects of one class."""
    out: List[Tuple[str, Any, dict]] = []
    seen = set()
    inst = _instance_dict(obj)
    if inst is not None:
        for k, v in inst.items():
            if not isinstance(k, str) or not k.startswith("_"):  # a non-str key is refused by name later
                out.append((k, v, {}))
                seen.add(k)
    klass = type(obj)
    if classes is None:
        declared = _class_declarations(klass)
    elif klass in classes:
        declared = classes[klass]
    else:
        declared = classes[klass] = _class_declarations(klass)
    for k, v in [*(_slot_items(obj) if inst is None else ()), *declared]:
        if k not in seen:
            out.append((k, v, {}))
            seen.add(k)
    return out


def _class_declarations(klass: type) -> List[Tuple[str, Any]]:
    """The class-body values (base classes first) that may hold canvas fields: Fields, lists and
    tuples, and data objects (e.g. ``arm = Arm()``), as on an instance.  Methods, properties and
    other descriptors (slots too), classes, modules and instances of the class itself (a default or
    singleton kept on the class) are left out; whether a list or object really holds
    Fields is for the caller to decide (deciding here would recurse without a cycle guard)."""
    out: List[Tuple[str, Any]] = []
    names = set()
    for base in reversed(klass.__mro__):
        for k, v in vars(base).items():
            if k.startswith("_") or k in names:
                continue
            if isinstance(v, klass) or (base is not object and isinstance(v, base)):
                continue  # a default / singleton instance (`Robot.default = Robot()`): not a part
            if isinstance(v, Field) or _is_sequence(v) or _may_hold_fields(v):
                out.append((k, v))
                names.add(k)
    return out


def _may_hold_fields(value: Any) -> bool:
    """A value that is an object with attributes (an instance ``__dict__`` or ``__slots__``), as an
    instance attribute may be; functions, properties and other descriptors (whose value depends
    on the instance), classes and imported modules are not."""
    if _is_leaf(value) or isinstance(value, types.ModuleType):
        return False
    if hasattr(type(value), "__get__"):  # function, property, classmethod, staticmethod, ...
        return False
    return dataclasses.is_dataclass(value) or _is_pydantic(value) or hasattr(value, "__dict__") \
        or _has_slots(value)
