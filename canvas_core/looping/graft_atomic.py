"""What keeps a graft atomic and finds the model it acts on: :func:`unwrap_for_graft` (the model
inside ``torch.compile`` / ``DataParallel`` wrappers; ``DistributedDataParallel`` refused),
:func:`inside_data_parallel`, and :func:`snapshot` / :func:`rollback` (everything a graft may
change on a model, and putting it back after a failed step)."""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

from torch import nn

from canvas_core.errors import BackboneError
from canvas_core.runtime.compiled_names import wrapper_chain

__all__ = ["unwrap_for_graft", "inside_data_parallel", "snapshot", "rollback", "module_state",
           "restore_module"]


def unwrap_for_graft(model: nn.Module, fn: str) -> nn.Module:
    """The model inside ``torch.compile``'s ``OptimizedModule`` and ``DataParallel`` wrappers (any
    number, any order; :func:`~canvas_core.runtime.compiled_names.wrapper_chain`), which
    ``graft_looped_blocks`` / ``ungraft_looped_blocks`` change in place: ``DataParallel``
    replicates its module at every forward, so it runs the grafted blocks (block and stack scopes;
    ``scope="model"`` is refused there, as its forward is bound to the model, not a replica). A
    ``DistributedDataParallel`` is refused: it registered its parameters (gradient buckets, the
    initial broadcast) when it was built, so loop parameters added or removed under it would not be
    synchronised across ranks."""
    from torch.nn.parallel import DistributedDataParallel

    for m in wrapper_chain(model):
        if isinstance(m, DistributedDataParallel):
            outer = "" if m is model else f" (inside {type(model).__name__})"
            raise BackboneError(
                f"{fn}: the model is wrapped in DistributedDataParallel{outer}, which registered its "
                "parameters when it was built, so the loop parameters this adds or removes would not "
                f"be synchronised across ranks. Call {fn} on the plain model (ddp.module) and wrap "
                "it in DistributedDataParallel again afterwards")
    return m


def inside_data_parallel(model: nn.Module) -> bool:
    """Whether ``model`` is a ``DataParallel`` or holds one through wrappers (compile handles)."""
    return any(isinstance(m, nn.DataParallel) for m in wrapper_chain(model))


_DICT_TYPES = (dict,)  # OrderedDict and the hook dicts are dict subclasses


def module_state(m: nn.Module) -> Tuple[Any, ...]:
    """One module's own state, not its submodules': its class, its ``__dict__`` and the dicts in it
    (``_parameters``, ``_modules``, hooks ...) copied one level deep."""
    inner = {k: dict(v) for k, v in m.__dict__.items() if isinstance(v, _DICT_TYPES)}
    return (m, type(m), dict(m.__dict__), inner)


def restore_module(saved: Tuple[Any, ...]) -> None:
    """Put one module back as :func:`module_state` saw it (its submodules are left as they are)."""
    m, cls, attrs, inner = saved
    if type(m) is not cls:
        m.__class__ = cls
    for k, v in inner.items():
        d = attrs[k]
        if d.keys() != v.keys() or any(d[x] is not v[x] for x in v):
            try:  # the mapping's own methods: an OrderedDict (hooks) keeps its links right
                d.clear()
                d.update(v)
            except Exception:  # noqa: BLE001 - a frozen mapping (a config) refuses its own
                dict.clear(d)
                dict.update(d, v)
    if m.__dict__.keys() != attrs.keys() or any(m.__dict__[k] is not v for k, v in attrs.items()):
        m.__dict__.clear()
        m.__dict__.update(attrs)


def snapshot(model: nn.Module, skip: Sequence[Any] = ()) -> List[Tuple[Any, ...]]:
    """What a graft may change on ``model`` and its modules: each module's :func:`module_state`
    (class and attributes: submodules, parameters, buffers, hooks, ``processor``, ``forward`` ...)
    and each parameter's ``requires_grad``.  The modules in ``skip`` are not descended into (the
    block a wrapper wraps, which the wrapper's ``set_loops`` leaves alone)."""
    if not skip:
        mods, params = list(model.modules()), list(model.parameters())
    else:
        ids, mods, todo = {id(b) for b in skip}, [], [model]
        while todo:
            m = todo.pop()
            mods.append(m)
            todo.extend(c for c in m._modules.values() if c is not None and id(c) not in ids)
        params = [p for m in mods for p in m._parameters.values() if p is not None]
    return [tuple(module_state(m) for m in mods), tuple((p, p.requires_grad) for p in params)]


def rollback(model: nn.Module, adapter: Any, saved: List[Tuple[Any, ...]]) -> None:
    """Put ``model`` back exactly as :func:`snapshot` saw it (after a failed graft step)."""
    mods, grads = saved
    restore = getattr(adapter, "unprepare", None)
    if callable(restore):  # the adapter's own inverse, for anything it changed outside the modules
        try:
            restore(model)
        except Exception:  # noqa: BLE001 - the snapshot below restores the model itself
            pass
    for state in mods:
        restore_module(state)
    for p, flag in grads:
        if p.requires_grad != flag:
            p.requires_grad_(flag)
