"""Which arguments of a looped step follow the rows of the samples still running (adaptive exit).

With ``exit_tol > 0`` the loop runs its later iterations on the rows of the samples that have not
stopped. The step's other arguments (a mask, a timestep embedding, a table of positions) must be
cut the same way when they hold one row per sample, and passed whole when they are shared. The
rule, decided by declaration and never by a guess from a shape:

* declared batched (``batched_args``): every tensor of first dim ``B`` inside it is indexed, also
  inside tuples (named tuples too), lists, dicts and **dataclass instances** (rebuilt with
  ``dataclasses.replace`` from the indexed fields); an ``nn.Parameter`` never is;
* declared unbatched (``unbatched_args``): passed whole;
* undeclared: passed whole when it holds no tensor of first dim ``B`` (not an ``nn.Parameter``)
  anywhere the rule can look (tuples, lists, dicts, dataclass fields, the attributes of other
  plain objects), refused otherwise.

Objects of other classes (anything holding tensors in its attributes that is not a dataclass) are
never rebuilt, and neither are callables: a function's closure cells and defaults, a bound method's
object and a ``functools.partial``'s arguments are searched like attributes (a closure over a
per-sample tensor, applied to the running rows, would mix samples), a global it reads is not.
Nothing says how to make a copy of them with fewer rows that keeps their meaning (caches,
closures, invariants). One that holds a per-sample tensor is refused whether declared
batched or not, naming the argument, the type and the place of the tensor, with the fixes. So
is, at the first split, a dataclass that ``replace`` refuses to rebuild (its ``__post_init__``
checks fail) or whose field ``replace`` cannot set (``init=False``) held a per-sample tensor that
``__init__`` / ``__post_init__`` did not recompute for the running rows.

The search is read-only: it reads instance ``__dict__`` s and ``__slots__`` through
``object.__getattribute__`` (no property or ``__getattr__`` runs), never looks inside an
``nn.Module`` (its tensors are weights and buffers, shared by every sample), and stops after a
bounded number of objects.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from canvas_core.errors import BackboneError

__all__ = ["index_rows", "per_sample_tensor", "row_plan", "step_plan", "step_rows"]

_MAX_DEPTH = 8  # nesting levels searched
_MAX_NODES = 4096  # objects searched per argument
_LEAVES = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size,
           enum.Enum, type, types.BuiltinFunctionType, types.ModuleType, nn.Module)


def _is_dataclass_instance(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _is_per_sample(value: Any, batch: int) -> bool:
    return (isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter)
            and value.dim() >= 1 and value.shape[0] == batch)


def _attributes(value: Any) -> Iterator[Tuple[str, Any]]:
    """The instance attributes of a plain object (its ``__dict__`` and set ``__slots__``), read
    without running any of its code."""
    try:
        own = object.__getattribute__(value, "__dict__")
    except AttributeError:
        own = None
    if isinstance(own, dict):
        yield from list(own.items())
    for cls in type(value).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            try:
                yield name, object.__getattribute__(value, name)
            except AttributeError:  # a slot never set
                continue


def _captured(value: Any) -> Optional[List[Tuple[str, Any]]]:
    """What a function (its closure cells and defaults), a bound method (its object) or a
    ``functools.partial`` (its function and arguments) holds; None for anything else. A step
    argument that is a closure over a per-sample tensor would apply every sample's row to the
    running rows only."""
    if isinstance(value, types.FunctionType):
        out: List[Tuple[str, Any]] = []
        for name, cell in zip(value.__code__.co_freevars, value.__closure__ or ()):
            try:
                out.append((f".<closure {name}>", cell.cell_contents))
            except ValueError:  # a cell not filled yet
                continue
        out += [(f".<default {i}>", v) for i, v in enumerate(value.__defaults__ or ())]
        out += [(f".<default {k}>", v) for k, v in (value.__kwdefaults__ or {}).items()]
        return out
    if isinstance(value, types.MethodType):
        return [(".__self__", value.__self__), (".__func__", value.__func__)]
    if isinstance(value, functools.partial):
        return ([(".func", value.func)] + [(f".args[{i}]", v) for i, v in enumerate(value.args)]
                + [(f".keywords[{k!r}]", v) for k, v in value.keywords.items()])
    return None


def _children(value: Any) -> Tuple[str, List[Tuple[str, Any]]]:
    """``(kind, [(label suffix, child)])``; kind is "leaf", "container", "dataclass" or "object"
    (functions, bound methods and partials are objects: what they capture is searched)."""
    if isinstance(value, torch.Tensor) or isinstance(value, _LEAVES):
        return "leaf", []
    captured = _captured(value)
    if captured is not None:
        return "object", captured
    if isinstance(value, (tuple, list)):
        return "container", [(f"[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return "container", [(f"[{k!r}]", v) for k, v in value.items()]
    if _is_dataclass_instance(value):
        return "dataclass", [(f".{k}", v) for k, v in _attributes(value)]
    return "object", [(f".{k}", v) for k, v in _attributes(value)]


def _find(value: Any, batch: int, where: str, split: bool) -> Optional[Tuple[str, Tuple[int, ...], str]]:
    """The first per-sample tensor inside ``value`` as ``(place, shape, reason)``.

    ``split=False`` (an undeclared argument): any per-sample tensor found, reason "".
    ``split=True`` (a declared one): only one :func:`index_rows` cannot index, with the reason."""
    seen = set()
    budget = [_MAX_NODES]

    def walk(v: Any, place: str, depth: int, blocked: str) -> Optional[Tuple[str, Tuple[int, ...], str]]:
        if _is_per_sample(v, batch):
            return (place, tuple(v.shape), blocked) if (blocked or not split) else None
        kind, items = _children(v)
        if kind == "leaf" or depth >= _MAX_DEPTH or id(v) in seen or budget[0] <= 0:
            return None
        seen.add(id(v))
        budget[0] -= 1
        for suffix, child in items:
            why = blocked
            if not why and kind == "object":
                why = (f"{place} is a {type(v).__name__}, an object the adaptive exit does not "
                       "rebuild (only tensors, tuples, lists, dicts and dataclass instances are split)")
            found = walk(child, place + suffix, depth + 1, why)
            if found is not None:
                return found
        return None

    return walk(value, where, 0, "")


def index_rows(value: Any, rows: torch.Tensor, batch: int, skip: bool = False, label: str = "an argument") -> Any:
    """``value`` restricted to the batch rows ``rows``: tensors whose first dim is ``batch`` are
    indexed, also inside tuples (named tuples too), lists, dicts and dataclass instances (rebuilt
    by ``dataclasses.replace``); anything else (tensors of another first dim, scalars, None, other
    objects) and any ``nn.Parameter`` (a weight is shared by every sample) is passed as is.
    ``skip`` leaves ``value`` untouched (an argument declared unbatched). ``label`` names the
    argument in the error raised when a dataclass cannot be rebuilt."""
    if skip:
        return value
    if isinstance(value, torch.Tensor):
        if value.dim() >= 1 and value.shape[0] == batch and not isinstance(value, nn.Parameter):
            return value.index_select(0, rows)
        return value
    if isinstance(value, tuple):
        items = [index_rows(v, rows, batch, label=f"{label}[{i}]") for i, v in enumerate(value)]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, list):
        return [index_rows(v, rows, batch, label=f"{label}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {k: index_rows(v, rows, batch, label=f"{label}[{k!r}]") for k, v in value.items()}
        return out if type(value) is dict else _same_mapping(value, out)
    if _is_dataclass_instance(value):
        return _replace_rows(value, rows, batch, label)
    return value


def _replace_rows(value: Any, rows: torch.Tensor, batch: int, label: str) -> Any:
    changes = {}
    fields = dict(_attributes(value))
    for f in dataclasses.fields(value):
        if not f.init or f.name not in fields:
            continue
        old = fields[f.name]
        new = index_rows(old, rows, batch, label=f"{label}.{f.name}")
        if new is not old:
            changes[f.name] = new
    if not changes:
        return value
    what = (f"adaptive exit (exit_tol > 0): {label}, a {type(value).__name__} dataclass declared in "
            f"batched_args, could not be rebuilt for the {int(rows.numel())} samples still running with "
            "dataclasses.replace")
    fix = ("Make the class rebuild every per-sample field from its __init__ arguments, pass the per-sample "
           "tensors as their own arguments, or use exit_tol=0")
    try:
        new = dataclasses.replace(value, **changes)
    except Exception as exc:  # its __init__ / __post_init__ refused the indexed fields
        raise BackboneError(f"{what} ({type(exc).__name__}: {exc}). {fix}") from None
    # a field replace() cannot set (init=False) is whatever __init__ / __post_init__ made of it: it
    # must now hold the running rows, not the whole batch nor nothing
    n = int(rows.numel())
    after = dict(_attributes(new))
    init = {f.name for f in dataclasses.fields(value) if f.init}
    for name, old in fields.items():  # init=False fields, and attributes set on the instance
        if name in init or _find(old, batch, "", split=False) is None:
            continue
        now = after.get(name)
        if _find(now, batch, "", split=False) is not None or _find(now, n, "", split=False) is None:
            raise BackboneError(
                f"{what}: its attribute {name!r}, not an __init__ field (init=False, or set on the "
                f"instance), held a per-sample tensor, and the rebuilt object's {name!r} does not hold "
                f"those {n} rows (replace() cannot set it; __init__ / __post_init__ left it "
                f"{'as ' + type(now).__name__ if name in after else 'unset'}). {fix}")
    return new


def _same_mapping(like: dict, items: dict) -> dict:
    try:
        return type(like)(items)
    except TypeError:  # a dict subclass whose constructor takes other arguments (defaultdict)
        return items


def per_sample_tensor(value: Any, batch: int, where: str) -> Optional[Tuple[str, Tuple[int, ...]]]:
    """The first tensor inside ``value`` that could hold one row per sample (first dim ``batch``,
    not an ``nn.Parameter``), inside containers, dataclasses or plain objects: its place and
    shape; None if none."""
    found = _find(value, batch, where, split=False)
    return None if found is None else found[:2]


def row_plan(names: Sequence[str], values: Sequence[Any], batch: int, batched: Sequence[str],
             unbatched: Sequence[str], where: str) -> List[bool]:
    """Which of the arguments ``values`` (named ``names``; ``""`` for a positional one without a
    name) the adaptive exit splits with the rows of the samples still running (True) and which it
    passes whole (False); see the module docstring for the rule. Refused with a
    :class:`BackboneError`: an undeclared argument holding a tensor whose first dim equals the
    batch size (nothing tells a per-sample tensor from a table whose length happens to be
    ``batch``), and a declared one holding such a tensor where it cannot be split."""
    plan = []
    for i, (name, v) in enumerate(zip(names, values)):
        label = name or f"positional argument {i}"
        key = name or "<its parameter name>"
        if name and name in unbatched:
            plan.append(False)
            continue
        if name and name in batched:
            stuck = _find(v, batch, label, split=True)
            if stuck is not None:
                place, shape, reason = stuck
                raise BackboneError(
                    f"{where}: adaptive exit (exit_tol > 0) runs only the samples that have not stopped, and "
                    f"{label!r} ({type(v).__name__}), declared in batched_args, holds the per-sample "
                    f"tensor {place} (shape {shape}) that it cannot cut to those rows: {reason}. Hold the "
                    "per-sample tensors in a dataclass (init fields), a dict, a tuple or a list, or pass them "
                    f"as their own arguments; declare unbatched_args=({key!r},) if it is shared by every "
                    "sample; or use exit_tol=0")
            plan.append(True)
            continue
        found = _find(v, batch, label, split=False)
        if found is not None:
            place, shape, _ = found
            stuck = _find(v, batch, label, split=True)
            fix = (f"graft_looped_blocks(..., batched_args=({key!r},)) splits it with the samples, "
                   f"unbatched_args=({key!r},) passes it whole" if stuck is None else
                   f"it cannot be split as it is ({stuck[2]}): hold the per-sample tensors in a "
                   "dataclass, a dict, a tuple or a list (then batched_args="
                   f"({key!r},)), or pass them as their own arguments; unbatched_args=({key!r},) "
                   "passes it whole")
            raise BackboneError(
                f"{where}: adaptive exit (exit_tol > 0) runs only the samples that have not stopped, "
                f"and {place} (shape {shape}) has a first dim equal to the batch size {batch}, so it "
                f"may hold one row per sample or be a table shared by every sample. Say which at "
                f"graft time: {fix}; or use exit_tol=0")
        plan.append(False)
    return plan


def step_plan(names: Sequence[str], args: Sequence[Any], kwargs: Mapping[str, Any], batch: int,
              batched: Sequence[str], unbatched: Sequence[str], where: str, exiting: bool,
              own_pos: Optional[int] = None, own_name: Optional[str] = None) -> Tuple[List[bool], Dict[str, bool]]:
    """For a looped step's positional ``args`` (named ``names``) and ``kwargs``: which follow the
    rows of the samples still running (:func:`row_plan` over both; all False when ``exiting`` is
    False, i.e. no adaptive exit can split the batch). The loop's own input (at ``own_pos`` /
    named ``own_name``), replaced every iteration, is left out of the rule."""
    flags_a, flags_k = [False] * len(args), dict.fromkeys(kwargs, False)
    if exiting:  # decided before any split
        idx = [i for i in range(len(args)) if i != own_pos]
        for i, f in zip(idx, row_plan([names[i] for i in idx], [args[i] for i in idx], batch, batched,
                                      unbatched, where)):
            flags_a[i] = f
        rest = [k for k in kwargs if k != own_name]
        flags_k.update(zip(rest, row_plan(rest, [kwargs[k] for k in rest], batch, batched, unbatched, where)))
    return flags_a, flags_k


def step_rows(names: Sequence[str], args: Sequence[Any], kwargs: Mapping[str, Any],
              plan: Tuple[List[bool], Dict[str, bool]], rows: torch.Tensor, batch: int
              ) -> Tuple[List[Any], Dict[str, Any]]:
    """``args`` and ``kwargs`` of a looped step on the running ``rows``: those :func:`step_plan`
    marked are cut with :func:`index_rows`, the others passed whole."""
    flags_a, flags_k = plan
    a = [index_rows(v, rows, batch, not f, label=(names[i] if i < len(names) else "") or f"positional argument {i}")
         for i, (v, f) in enumerate(zip(args, flags_a))]
    k = {n: index_rows(v, rows, batch, not flags_k[n], label=n) for n, v in kwargs.items()}
    return a, k
