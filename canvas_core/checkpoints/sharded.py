"""Canvas checkpoints of models whose tensors are sharded ``DTensor`` s (FSDP2's ``fully_shard``,
tensor parallelism): the whole tensors are gathered to write one ordinary file, and a file is cut
into this rank's shards to load it.

Saving gathers every ``DTensor`` (``DTensor.full_tensor()``, a collective), so **every rank**
holding the model's shards must call :func:`~canvas_core.checkpoints.save_canvas_checkpoint`,
in the same order.  A call made by some ranks only must not wait forever inside the gather, so
before any collective the ranks meet through the process group's key-value store
(:func:`agree_before_gather`): each says whether its own checks passed; a rank that waits more
than half the process group's timeout for the others gives up with a :class:`CheckpointError`
(half: it then reaches the next collective of the others before they time out in it), and one
rank's refusal (a read-only path, another schema ...) is raised on every rank before anything is
gathered or written.  Loading moves no tensor between ranks (each rank cuts its own shards from
the file), but the ranks meet the same way before any of them changes its shards: a file refused
on one rank only (another schema on that rank, a missing file ...) would otherwise leave the
sharded model half loaded, some ranks holding the file's values and the others their old ones.
Every meeting has keys of its own, numbered by counters kept in the store (so a process group made
again on a fresh store starts every rank's count afresh), and the last rank to leave a meeting,
whether it met or was given up, deletes its keys: a save after a failed one finds no stale keys.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn

from canvas_core.checkpoints.loaded_values import loaded_value
from canvas_core.errors import CheckpointError

__all__ = ["dtensor_type", "is_dtensor", "model_class_name", "agree_before_gather", "gather_full", "shard_like"]

_ABANDONED = 1 << 40  # added to a round's arrival count by a rank that stopped waiting


def dtensor_type() -> Optional[type]:
    """``DTensor`` of this torch (public since 2.5, ``torch.distributed._tensor`` before), or None."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        try:
            from torch.distributed._tensor import DTensor
        except ImportError:
            return None
    return DTensor


def is_dtensor(t: Any) -> bool:
    cls = dtensor_type()
    return cls is not None and isinstance(t, cls)


def model_class_name(model: nn.Module) -> str:
    """The qualified name of ``model``'s own class: ``fully_shard`` turns a ``Net`` into an
    ``FSDPNet`` made for it (a subclass of ``FSDPModule`` and ``Net``): its name is ``Net``'s."""
    cls = type(model)
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return cls.__qualname__
    if issubclass(cls, FSDPModule):
        cls = next((b for b in cls.__mro__[1:] if not issubclass(b, FSDPModule)), cls)
    return cls.__qualname__


def _ranks_of(tensors: Mapping[str, Any]) -> List[int]:
    """The global ranks of every device mesh the DTensors of ``tensors`` live on."""
    ranks = set()
    for t in tensors.values():
        if is_dtensor(t):
            ranks.update(int(r) for r in t.device_mesh.mesh.flatten().tolist())
    return sorted(ranks)


_ACTIONS = {  # action -> (what was not done when the meeting failed, what every rank does together)
    "save": ("nothing was gathered or written", "gather its tensors together, so nothing was written on any rank"),
    "load": ("no rank changed its shards of the model",
             "load the file together, so no rank changed its shards and the model is as it was"),
}


def _default_store(where: str) -> Any:
    """The default process group's key-value store, reached through a private torch function
    (``torch.distributed.distributed_c10d._get_default_store``); a torch without it gets a
    :class:`CheckpointError` saying so instead of an ImportError."""
    try:
        from torch.distributed.distributed_c10d import _get_default_store
    except ImportError:
        raise CheckpointError(
            f"{where}: the model's tensors are sharded (DTensor), and its ranks meet through the process group's "
            f"key-value store before acting together, which canvas-core reaches through the private "
            f"torch.distributed.distributed_c10d._get_default_store; this torch ({torch.__version__}) has no such "
            "function. Load checkpoints into the model before sharding it (fully_shard); to save, gather the whole "
            "state dict on every rank yourself (torch.distributed.checkpoint.state_dict.get_model_state_dict with "
            "StateDictOptions(full_state_dict=True)) and write it with save_safetensors_atomic; or use a torch "
            "release that has this function") from None
    return _get_default_store()


def agree_before_gather(tensors: Mapping[str, Any], where: str, failure: Optional[BaseException],
                        action: str = "save") -> None:
    """Meet the other ranks holding shards of ``tensors`` before they act together (``action``:
    ``"save"``, before the collective gather; ``"load"``, before any rank changes its shards),
    and raise the same refusal on every rank when any rank's own checks failed (``failure``: this
    rank's exception, or None).  Uses the process group's store, never a collective, and waits
    at most half the process group's timeout.  Returns only when every rank is ready.  Saves and
    loads meet separately: a save on one rank never pairs with a load on another.

    Each meeting is a *round* with keys of its own.  A rank's rounds are numbered by a counter
    kept in the store (``.../next/<rank>``), not in the process, so every rank numbers them from
    the same place: after the process group is made again on a fresh store all counters start at
    0 together, and a process restarted on the same store goes on from where its rank was.  A
    round either *meets* (every rank came in time) or is *abandoned* by the first rank that waited
    too long, which names the ranks still missing; the verdict is written once (``compare_set``),
    so every rank of the round reads the same one.  A rank arriving after the round was abandoned
    (or named missing by it) goes on to its next round, where the ranks that gave up meet it on
    their next call.  The last rank to leave a round deletes its keys."""
    import torch.distributed as dist

    store = _default_store(where)
    ranks = _ranks_of(tensors)
    me = dist.get_rank()
    timeout = store.timeout / 2
    undone, together = _ACTIONS[action]
    tag = f"canvas_core/sharded_{action}/" + ",".join(map(str, ranks))
    status = "ok" if failure is None else f"{type(failure).__name__}: {failure}"[:600]
    while True:
        base = f"{tag}/{store.add(f'{tag}/next/{me}', 1) - 1}"
        store.set(f"{base}/status/{me}", status)
        arrived = store.add(f"{base}/count", 1)
        if arrived >= _ABANDONED:  # came after a rank gave up on this round: meet them in the next
            _leave(store, base, ranks)
            continue
        if arrived == len(ranks):
            verdict = _decide(store, base, "met")
        elif _wait(store, f"{base}/verdict", timeout):
            verdict = store.get(f"{base}/verdict").decode()
        else:
            missing = [r for r in ranks if not store.check([f"{base}/status/{r}"])]
            if not missing and _wait(store, f"{base}/verdict", timeout):
                verdict = store.get(f"{base}/verdict").decode()  # all came: the last one decides
            else:  # mark the round first: a rank arriving from now on goes on to its next round
                store.add(f"{base}/count", _ABANDONED)
                verdict = _decide(store, base, "abandoned:" + ",".join(map(str, missing)))
        if verdict == "met":
            break
        missing = [int(r) for r in verdict.partition(":")[2].split(",") if r]
        _leave(store, base, ranks)
        if me in missing:  # this rank came just as the others gave up: it meets them in its next round
            continue
        seconds = timeout.total_seconds()
        if not missing:  # every rank arrived, but one stopped before the round ended
            raise CheckpointError(
                f"{where}: the model's tensors are sharded (DTensor, e.g. FSDP2's fully_shard) over ranks {ranks}; "
                f"every rank called {where}, but their meeting did not end within the process group's timeout: "
                f"a rank stopped in the middle of it (killed or interrupted?); {undone}. Check "
                f"that every rank is alive, then {action} on every rank again")
        raise CheckpointError(
            f"{where}: the model's tensors are sharded (DTensor, e.g. FSDP2's fully_shard) over ranks {ranks}, "
            f"and rank(s) {missing} did not call {where} within {seconds:g} s (half the "
            f"process group's timeout); {undone}. Call it on every rank of the model, in the same order"
            + (" (every rank then writes the whole model to its path)" if action == "save" else "")
            + ", e.g. not inside `if rank == 0:`")
    statuses = {r: store.get(f"{base}/status/{r}").decode("utf-8", "replace") for r in ranks}
    _leave(store, base, ranks)
    if failure is not None:
        raise failure
    bad = {r: s for r, s in statuses.items() if s != "ok"}
    if bad:
        first = min(bad)
        raise CheckpointError(
            f"{where}: rank(s) {sorted(bad)} refused the {action} (rank {first}: {bad[first]}); the ranks of a "
            f"sharded model {together}. Fix what rank {first} names, then {action} on every rank again")


def _decide(store: Any, base: str, verdict: str) -> str:
    """Write ``verdict`` for the round unless one was written already; the verdict that stands."""
    return store.compare_set(f"{base}/verdict", "", verdict).decode()


def _leave(store: Any, base: str, ranks: List[int]) -> None:
    """This rank is done with the round (it read all it needed); the last of its ranks to leave
    removes the round's keys.  A rank that never comes (a dead process) leaves a few bytes."""
    if store.add(f"{base}/left", 1) != len(ranks):
        return
    for key in [f"{base}/status/{r}" for r in ranks] + [f"{base}/count", f"{base}/verdict", f"{base}/left"]:
        try:
            store.delete_key(key)
        except Exception:  # noqa: BLE001 - a store without deletion keeps a few bytes
            pass


def _wait(store: Any, key: str, timeout: timedelta) -> bool:
    try:
        store.wait([key], timeout)
        return True
    except RuntimeError:  # DistStoreError: the store's wait timed out
        return False


def gather_full(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``state`` with every DTensor replaced by its whole tensor (on the CPU), in order; a
    collective per DTensor, which every rank holding its shards must run in the same order."""
    out: Dict[str, torch.Tensor] = {}
    for k, v in state.items():
        out[k] = v.full_tensor().detach().cpu() if is_dtensor(v) else v
    return out


def shard_like(t: torch.Tensor, ref: Any, where: str, name: str = "") -> Any:
    """``t``, a whole tensor read from a file, as a DTensor laid out like ``ref`` (its mesh and
    placements): this rank's shards, cut locally without any communication.  ``t`` is cast to
    ``ref``'s dtype first, refused (:class:`CheckpointError` naming ``name``) where the cast would
    not keep its values (:func:`~canvas_core.checkpoints.loaded_values.loaded_value`)."""
    import inspect

    try:
        from torch.distributed.tensor import distribute_tensor
    except ImportError:  # torch < 2.5
        distribute_tensor = None
    if distribute_tensor is None or "src_data_rank" not in inspect.signature(distribute_tensor).parameters:
        raise CheckpointError(
            f"{where}: the model's tensors are sharded (DTensor), and this torch ({torch.__version__}) cannot "
            "cut a whole tensor into this rank's shards without communicating; load the checkpoint into the "
            "model before sharding it (fully_shard), or a torch whose distribute_tensor takes src_data_rank")
    if t.dtype != ref.dtype:  # the caller checked the file's values; a cast may still overflow
        t = loaded_value(t, ref.dtype, name or f"of shape {tuple(t.shape)}", where)
    local = t.to(device=ref.to_local().device)
    return distribute_tensor(local, ref.device_mesh, ref.placements, src_data_rank=None)
