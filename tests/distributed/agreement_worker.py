"""Per-call agreement between gloo ranks: ``python agreement_worker.py --world N --port P --dir D
[--pg-timeout S] [--timeout S] SCENARIO ...`` forks N ranks that run the scenarios
(``test_call_agreement.py`` starts it through ``_launch.py``).

* ``canvas_calls``: ``shard_canvas`` / ``unshard_canvas`` given tensors that differ between the
  ranks (batch size, dtype, width, sequence length, sharding, a share of the wrong length) raise
  ``SequenceParallelError`` on every rank, naming the field and the ranks' values, instead of a
  crash or a hang inside gloo; ``check_inputs=False`` communicates nothing.
* ``sharded_rounds`` / ``sharded_three``: the store meetings of FSDP2 saves.  A save given up by
  one rank, then a save on every rank, leaves no round's keys behind; after the process group is
  made again on a fresh store, a save refused on one rank is refused on every rank (naming it),
  and a save then works and loads; with three ranks two of which wait for a third, both give up
  with a ``CheckpointError``.

A line ``OK <scenario>`` on rank 0's stdout marks a scenario that passed.  The process group's
timeout is short (a few seconds), so a rank left waiting fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

import canvas_core as cc
from _canvas_case import LAYOUT, SCHEMA, TOPO  # this folder: the script's own directory is on sys.path
from _fork import fork_ranks
from canvas_core import AttentionDispatcher, CanvasLayout
from canvas_core.errors import CheckpointError
from canvas_core.runtime.sequence_parallel import (
    CanvasSharding,
    SequenceParallelCanvasAttention,
    SequenceParallelError,
    shard_canvas,
    unshard_canvas,
)

RANK = WORLD = 0
DIR = ""
PG_TIMEOUT = 4.0
SECOND_PORT = 0


def refused(call, error, *words) -> str:
    try:
        call()
    except error as e:
        for w in words:
            assert w in str(e), (w, str(e))
        return str(e)
    raise AssertionError(f"no {error.__name__} ({words})")


def init(port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=RANK, world_size=WORLD,
                            timeout=timedelta(seconds=PG_TIMEOUT))


def store():
    from torch.distributed.distributed_c10d import _get_default_store

    return _get_default_store()


def after(rank: int, name: str, call=None) -> None:
    """``call()`` on ``rank`` alone while the others wait (through the store, not a collective,
    so that their wait does not run into the process group's short timeout)."""
    key = f"test/{name}"
    if RANK == rank:
        call()
        store().set(key, "1")
    else:
        store().wait([key], timedelta(seconds=60))


# --- shard_canvas / unshard_canvas ---------------------------------------------------------------
def scenario_canvas_calls() -> str:
    torch.manual_seed(0)
    sp = SequenceParallelCanvasAttention(AttentionDispatcher(TOPO, LAYOUT, 16, 4))
    sharding, last, odd = sp.sharding, WORLD - 1, RANK == WORLD - 1
    x = torch.randn(2, LAYOUT.num_positions, 16, generator=torch.Generator().manual_seed(0))
    share = shard_canvas(x, sharding)
    n_r = sharding.sizes[RANK]
    # unshard_canvas exchanges the shares: each of these stopped a rank inside gloo, or left one waiting
    for field, bad, words in [
            ("batch size", share[:1], ("rank 0 2", f"rank {last} 1")),
            ("dtype", share.double(), ("rank 0 float32", f"rank {last} float64")),
            ("trailing shape", share[..., :8], ("rank 0 (16)", f"rank {last} (8)")),
            ("number of dimensions", share[..., None], ("rank 0 3", f"rank {last} 4"))]:
        refused(lambda t=bad if odd else share: unshard_canvas(t, sharding), SequenceParallelError,
                "unshard_canvas on rank", f"different {field}", *words)
        dist.barrier()
    own = ("on this rank", f"holds {n_r} positions") if odd else ()
    refused(lambda: unshard_canvas(share[:, :-1] if odd else share, sharding), SequenceParallelError,
            f"rank(s) [{last}] refused their input", f"(2, {sharding.sizes[last] - 1}, 16)", *own)
    dist.barrier()
    # shard_canvas: the whole canvas must be the same kind of tensor on every rank
    other = CanvasLayout(T=2, H=2, W=2, d_model=16, regions={"v": (0, 2, 0, 2, 0, 2)})
    for field, bad, on, words in [
            ("batch size", x[:1], sharding, ("rank 0 2", f"rank {last} 1")),
            ("dtype", x.half(), sharding, ("rank 0 float32", f"rank {last} float16")),
            ("sequence length", x[:, :-1], sharding, (f"rank 0 {LAYOUT.num_positions}", "the whole canvas (B, N, ...)")),
            ("trailing shape", x[..., :8], sharding, ("rank 0 (16)", f"rank {last} (8)")),
            ("sharding", torch.zeros(2, other.num_positions, 16), CanvasSharding.of(other, WORLD),
             (f"rank 0 N={LAYOUT.num_positions}", f"rank {last} N={other.num_positions}"))]:
        refused(lambda t=bad if odd else x, s=on if odd else sharding: shard_canvas(t, s, check_inputs=True),
                SequenceParallelError,
                "shard_canvas on rank", f"different {field}", *words)
        dist.barrier()
    refused(lambda: shard_canvas(x, sharding, check_inputs="yes"), SequenceParallelError,
            "check_inputs must be True or False")
    # by default (check_inputs=False) shard_canvas communicates nothing: one rank alone returns at once
    after(0, "no_check", lambda: torch.testing.assert_close(shard_canvas(x, sharding), share))
    assert torch.equal(unshard_canvas(share, sharding, check_inputs=False), x)
    dist.barrier()
    # and the group still works, with the sharding or the layer
    assert torch.equal(unshard_canvas(shard_canvas(x, sharding, check_inputs=True), sharding), x)
    assert torch.equal(unshard_canvas(shard_canvas(x, sp, check_inputs=True), sp), x)
    dist.barrier()
    return "unshard: 4 fields + a wrong share; shard: 5 fields; no-check alone"


# --- FSDP2 save meetings -------------------------------------------------------------------------
class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.canvas = cc.SpatiotemporalCanvas(LAYOUT)
        self.mid = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)


def model(seed: int, sharded: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    m = Model()
    if sharded:
        from torch.distributed.fsdp import fully_shard

        fully_shard(m.mid)
        fully_shard(m)
    return m


def same_as(m: nn.Module, seed: int) -> None:
    want = model(seed, sharded=False).state_dict()
    got = m.state_dict()
    assert sorted(got) == sorted(want)
    for k, v in got.items():
        v = v.full_tensor() if hasattr(v, "full_tensor") else v
        assert torch.equal(v, want[k]), k


def round_keys(tag: str, rounds: int) -> list:
    names = [f"{tag}/{r}/{k}" for r in range(rounds) for k in ("count", "verdict", "left", "read", "all")]
    names += [f"{tag}/{r}/status/{s}" for r in range(rounds) for s in range(WORLD)]
    return [k for k in names if store().check([k])]


def scenario_sharded_rounds() -> str:
    m = model(0)
    path = os.path.join(DIR, "rounds.safetensors")
    lone = (CheckpointError, f"rank(s) [{WORLD - 1}]", "did not call")
    # rank 0 saves alone and gives up; then every rank saves: the late ranks pass the given-up
    # round and meet rank 0 in the next; no key of either round is left in the store
    after(0, "lone1", lambda: refused(lambda: cc.save_canvas_checkpoint(m, path, SCHEMA), *lone))
    cc.save_canvas_checkpoint(m, path, SCHEMA)
    dist.barrier()
    leftover = round_keys("canvas_core/sharded_save/" + ",".join(map(str, range(WORLD))), 4)
    assert not leftover, leftover
    same_as(_loaded(path), 0)
    # rank 0 gives up alone once more, then the job makes its process group again, on a fresh store
    after(0, "lone2", lambda: refused(lambda: cc.save_canvas_checkpoint(m, path, SCHEMA), *lone))
    dist.barrier()
    dist.destroy_process_group()
    init(SECOND_PORT)
    m = model(1)
    odd = RANK == WORLD - 1
    bad = os.path.join(DIR, "a_directory")
    os.makedirs(bad, exist_ok=True)
    mine = os.path.join(DIR, f"rank{RANK}.safetensors")
    words = ("directory",) if odd else ("refused the save", f"rank(s) [{WORLD - 1}]", "directory")
    t0 = time.monotonic()
    refused(lambda: cc.save_canvas_checkpoint(m, bad if odd else mine, SCHEMA), CheckpointError, *words)
    assert time.monotonic() - t0 < PG_TIMEOUT / 2, "the ranks did not meet: one of them waited for the others"
    assert not os.path.exists(mine)
    dist.barrier()
    cc.save_canvas_checkpoint(m, mine, SCHEMA, metadata={"rank": RANK})
    dist.barrier()
    same_as(_loaded(mine), 1)
    resumed = model(7)
    cc.load_canvas_checkpoint(resumed, mine, SCHEMA)
    same_as(resumed, 1)
    dist.barrier()
    return "given-up rounds cleaned; refused then saved on a fresh store"


def _loaded(path: str) -> nn.Module:
    plain = model(9, sharded=False)
    cc.load_canvas_checkpoint(plain, path, SCHEMA)
    return plain


def scenario_sharded_three() -> str:
    """Ranks 0 and 1 save while the last rank does not: both give up with a CheckpointError naming
    it (the second used to take the round for met and wait on the missing rank's key)."""
    m = model(0)
    path = os.path.join(DIR, f"three{RANK}.safetensors")
    key = "test/three_done"
    if RANK < WORLD - 1:
        refused(lambda: cc.save_canvas_checkpoint(m, path, SCHEMA), CheckpointError,
                f"rank(s) [{WORLD - 1}] did not call")
        store().add(key, 1)
    else:
        while int(store().add(key, 0)) < WORLD - 1:
            time.sleep(0.05)
    dist.barrier()
    cc.save_canvas_checkpoint(m, path, SCHEMA)
    dist.barrier()
    same_as(_loaded(path), 0)
    dist.barrier()
    return "both waiting ranks gave up; then saved"


def run(rank: int, world: int, port: int, names) -> None:
    global RANK, WORLD
    torch.set_num_threads(1)
    RANK, WORLD = rank, world
    init(port)
    for name in names:
        t0 = time.perf_counter()
        detail = globals()[f"scenario_{name}"]()
        if RANK == 0:
            print(f"OK {name} world={WORLD}: {detail} ({time.perf_counter() - t0:.1f} s)", flush=True)
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv) -> int:
    global DIR, PG_TIMEOUT, SECOND_PORT
    opts, rest = {}, []
    it = iter(argv)
    for a in it:
        if a in ("--world", "--port", "--timeout", "--dir", "--pg-timeout"):
            opts[a] = next(it)
        else:
            rest.append(a)
    world, port = int(opts["--world"]), int(opts["--port"])
    DIR, PG_TIMEOUT = opts["--dir"], float(opts.get("--pg-timeout", PG_TIMEOUT))
    SECOND_PORT = _free_port()  # chosen before forking: every rank makes its second group there
    return fork_ranks(lambda rank: run(rank, world, port, rest), world, float(opts.get("--timeout", 120)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
