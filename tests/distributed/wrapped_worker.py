"""Checkpoints, telemetry and input checks of wrapped models on a gloo group:
``python wrapped_worker.py --world N --port P --dir D [--pg-timeout S] SCENARIO ...`` forks N
ranks that run the scenarios (``test_wrapped_models.py`` starts it through ``_launch.py``).

Wrappers: ``DistributedDataParallel`` (names gain ``module.``), ``parallelize_canvas`` (a
``SequenceParallelCanvasAttention`` holds each canvas layer as ``attn``) and FSDP2's
``fully_shard`` (tensors become sharded DTensors).  A line ``OK <scenario>`` on rank 0's stdout
marks a scenario that passed; every scenario ends with a barrier, so a rank left inside a
collective shows up as a failure (the process group's timeout is short), never as a hang.
"""

from __future__ import annotations

import copy
import os
import sys
import time
import warnings
from datetime import timedelta

import torch
import torch.distributed as dist
from safetensors import safe_open
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import canvas_core as cc
from _canvas_case import LAYOUT, SCHEMA, TOPO  # this folder: the script's own directory is on sys.path
from _fork import fork_ranks
from canvas_core import AttentionDispatcher, CanvasSchema, CanvasTopology, Connection
from canvas_core.checkpoints import refuse_non_finite, save_safetensors_atomic
from canvas_core.errors import CheckpointError, ShapeError
from canvas_core.runtime.sequence_parallel import (
    SequenceParallelCanvasAttention,
    SequenceParallelError,
    SequenceParallelWarning,
    parallelize_canvas,
    shard_canvas,
    unshard_canvas,
)

RANK = WORLD = 0
DIR = ""


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.attn = AttentionDispatcher(TOPO, LAYOUT, 16, 4)
        self.mlp = nn.Linear(16, 16)

    def forward(self, x):
        return x + self.mlp(self.attn(self.norm(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.canvas = cc.SpatiotemporalCanvas(LAYOUT)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def net(seed: int) -> Net:
    torch.manual_seed(seed)
    return Net()


def keys(path) -> list:
    with safe_open(str(path), "pt") as f:
        return sorted(f.keys())


def same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def refused(call, error, *words) -> str:
    try:
        call()
    except error as e:
        for w in words:
            assert w in str(e), (w, str(e))
        return str(e)
    raise AssertionError(f"no {error.__name__} ({words})")


def fsdp(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for b in model.blocks:
        fully_shard(b)
    return fully_shard(model)


# --- scenarios ---------------------------------------------------------------------------------
def scenario_ddp() -> str:
    """A DDP model's checkpoint and telemetry have the plain model's names, both ways."""
    ddp = DistributedDataParallel(net(0))
    path = os.path.join(DIR, "ddp.safetensors")
    if RANK == 0:
        cc.save_canvas_checkpoint(ddp, path, SCHEMA)
    dist.barrier()
    assert keys(path) == sorted(net(0).state_dict()) and not any(k.startswith("module.") for k in keys(path))
    assert cc.read_canvas_checkpoint_header(path)["model_class"] == "Net"
    plain = net(1)
    cc.load_canvas_checkpoint(plain, path, SCHEMA)
    same_state(plain, net(0))
    other = DistributedDataParallel(net(2))  # and back into a wrapped model
    cc.load_canvas_checkpoint(other, path, SCHEMA)
    same_state(other.module, net(0))
    x = torch.randn(1, LAYOUT.num_positions, 16, generator=torch.Generator().manual_seed(0))
    want = cc.telemetry(net(0), x)
    got = cc.telemetry(DistributedDataParallel(net(0)), x)
    assert sorted(got) == sorted(want) and any(k.startswith("blocks.0.attn/") for k in got), sorted(got)[:3]
    dist.barrier()
    return f"{len(keys(path))} plain names, telemetry {len(got)} keys"


def scenario_sp() -> str:
    """parallelize_canvas: plain names in the file, loads both ways, telemetry and a second call
    refused clearly."""
    model = net(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SequenceParallelWarning)
        sharding = parallelize_canvas(model)
    assert isinstance(model.blocks[0].attn, SequenceParallelCanvasAttention)
    path = os.path.join(DIR, "sp.safetensors")
    if RANK == 0:
        cc.save_canvas_checkpoint(model, path, SCHEMA)
    dist.barrier()
    assert keys(path) == sorted(net(0).state_dict())
    plain = net(1)
    cc.load_canvas_checkpoint(plain, path, SCHEMA)
    same_state(plain, net(0))
    other = net(2)
    parallelize_canvas(other)
    cc.load_canvas_checkpoint(other, os.path.join(DIR, "sp.safetensors"), SCHEMA)
    for (n, p), q in zip(other.named_parameters(), net(0).parameters()):
        assert torch.equal(p, q), n
    x = torch.randn(2, LAYOUT.num_positions, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(unshard_canvas(other(shard_canvas(x, sharding)), sharding), net(0)(x))
    refused(lambda: cc.telemetry(other, shard_canvas(x, sharding)), SequenceParallelError,
            "sequence-parallel", "blocks.0.attn")
    refused(lambda: parallelize_canvas(other), SequenceParallelError, "already parallelized", "blocks.0.attn")
    dist.barrier()
    return "names plain both ways"


def scenario_sp_calls() -> str:
    """A call whose batch size, dtype, active_regions or beta differs between the ranks raises
    SequenceParallelError on every rank (no crash inside gloo); then the group still works."""
    topo = CanvasTopology(connections=[Connection("v", "v"), Connection("a", "v"), Connection("v", "a")])
    torch.manual_seed(0)
    whole = AttentionDispatcher(topo, LAYOUT, 16, 4).double()
    x = torch.randn(2, LAYOUT.num_positions, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    odd = RANK == WORLD - 1
    cases = {
        "batch size": dict(x=x[:1] if odd else x),
        "dtype": dict(x=x.float() if odd else x, layer=lambda a: a.float() if odd else a),
        "active_regions": dict(active=["v"] if odd else None),
        "beta": dict(beta=2.5 if odd else 1.0),
        # a refusal of the input on one rank (its own ShapeError) stops every rank before the exchange
        "input": dict(width=8 if odd else 16, error=ShapeError if odd else SequenceParallelError,
                      words=("expects its share",) if odd else (f"rank(s) [{WORLD - 1}] refused their input",)),
    }
    for what, case in cases.items():
        attn = case.get("layer", lambda a: a)(copy.deepcopy(whole))
        sp = SequenceParallelCanvasAttention(attn)
        attn.beta = case.get("beta", 1.0)  # changed after construction, as a schedule does
        share = shard_canvas(case.get("x", x), sp)[:, :, :case.get("width", 16)]
        refused(lambda sp=sp, share=share, active=case.get("active"): sp(share, active),
                case.get("error", SequenceParallelError),
                *case.get("words", (f"different {what}",)))
        dist.barrier()
    sp = SequenceParallelCanvasAttention(copy.deepcopy(whole))
    with torch.no_grad():
        torch.testing.assert_close(unshard_canvas(sp(shard_canvas(x, sp)), sp), whole(x))
    dist.barrier()
    return ", ".join(cases)


def scenario_fsdp() -> str:
    """FSDP2: every rank saves the gathered whole model; a save made by one rank only, or refused by
    one rank, raises a CheckpointError on the ranks that called (no hang) and writes nothing; a
    later save on every rank works again; a file loads into an FSDP2 model on every rank."""
    model = fsdp(net(0))
    mine = os.path.join(DIR, f"fsdp_rank{RANK}.safetensors")
    shared = os.path.join(DIR, "fsdp.safetensors")
    if RANK == 0:  # alone: the others went on to the barrier
        t0 = time.monotonic()
        refused(lambda: cc.save_canvas_checkpoint(model, shared, SCHEMA), CheckpointError,
                "rank(s) [1", "did not call", "every rank")
        assert time.monotonic() - t0 < 60
        assert not os.path.exists(shared)
    dist.barrier()
    bad = os.path.join(DIR, "a_directory")
    os.makedirs(bad, exist_ok=True)
    target = bad if RANK == WORLD - 1 else mine  # one rank's path is refused: every rank stops
    words = ("directory",) if RANK == WORLD - 1 else ("refused the save", f"rank {WORLD - 1}", "directory")
    refused(lambda: cc.save_canvas_checkpoint(model, target, SCHEMA), CheckpointError, *words)
    assert not os.path.exists(mine)
    dist.barrier()
    last = model.head.weight.to_local()  # a NaN in one rank's shard: every rank refuses, names it
    with torch.no_grad():
        keep = last.clone()
        if RANK == WORLD - 1:
            last.view(-1)[0] = float("nan")
    words = ("NaN",) if RANK == WORLD - 1 else ("refused the save", "head.weight", "NaN")
    refused(lambda: cc.save_canvas_checkpoint(model, mine, SCHEMA), CheckpointError, *words)
    with torch.no_grad():
        last.copy_(keep)
    assert not os.path.exists(mine)
    if RANK == 0:  # the tensor helpers refuse DTensors up front: no collective, so no wait
        refused(lambda: refuse_non_finite(model.state_dict(), "a test file"), CheckpointError, "sharded DTensors")
        refused(lambda: save_safetensors_atomic(model.state_dict(), mine, None, "a test file"),
                CheckpointError, "sharded DTensors", "full_tensor")
        assert not os.path.exists(mine)
    dist.barrier()
    for path in (mine, shared):  # every rank, its own path and one shared path
        cc.save_canvas_checkpoint(model, path, SCHEMA, metadata={"rank": RANK})
    dist.barrier()
    for path in (mine, shared):
        header = cc.read_canvas_checkpoint_header(path)
        assert header["model_class"] == "Net", header["model_class"]
        plain = net(1)
        cc.load_canvas_checkpoint(plain, path, SCHEMA)
        same_state(plain, net(0))  # whole tensors, not one rank's shards
    resumed = fsdp(net(3))
    cc.load_canvas_checkpoint(resumed, shared, SCHEMA)  # every rank cuts its own shards
    for (n, p), q in zip(resumed.named_parameters(), net(0).parameters()):
        assert torch.equal(p.full_tensor(), q), n
    before = {k: v.to_local().clone() for k, v in resumed.state_dict().items() if hasattr(v, "to_local")}
    refused(lambda: cc.load_canvas_checkpoint(resumed, os.path.join(DIR, "ddp_other.safetensors"), SCHEMA),
            CheckpointError, "has shape (5, 16)")
    for k, v in resumed.state_dict().items():
        if k in before:
            assert torch.equal(v.to_local(), before[k]), k
    dist.barrier()
    return "gathered saves, lone and refused saves, sharded load"


def scenario_sp_autocast() -> str:
    """torch.autocast on one rank only: the input is float32 on every rank, but that rank's
    projections send bfloat16 shares; the per-call agreement refuses it on every rank, naming both
    dtypes (gloo aborted the process on the size mismatch).  Autocast on every rank still runs."""
    torch.manual_seed(0)
    sp = SequenceParallelCanvasAttention(AttentionDispatcher(TOPO, LAYOUT, 16, 4))
    share = shard_canvas(torch.randn(2, LAYOUT.num_positions, 16, generator=torch.Generator().manual_seed(0)), sp)

    def call(on: bool):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=on):
            return sp(share)

    refused(lambda: call(RANK == WORLD - 1), SequenceParallelError, "different autocast",
            "rank 0 no autocast (tensors exchanged as float32)", f"rank {WORLD - 1} autocast to bfloat16")
    dist.barrier()
    both = call(True)
    assert both.shape == share.shape and torch.isfinite(both).all()
    torch.testing.assert_close(call(False), both.float(), atol=0.1, rtol=0.1)
    dist.barrier()
    return "one-rank autocast refused on every rank"


def scenario_fsdp_load() -> str:
    """A load into an FSDP2 model refused on one rank only (another schema there, or no file) is
    refused on every rank, and no rank changed its shards; a good load then works on every rank."""
    path = os.path.join(DIR, "fsdp_load.safetensors")
    if RANK == 0:
        cc.save_canvas_checkpoint(net(0), path, SCHEMA)
    dist.barrier()
    model = fsdp(net(9))
    def local(v):  # this rank's shard of a DTensor (buffers stay plain tensors)
        return v.to_local() if hasattr(v, "to_local") else v

    before = {k: local(v).clone() for k, v in model.state_dict().items()}
    other = CanvasSchema(layout=LAYOUT, topology=CanvasTopology(connections=[Connection("v", "a")]))
    odd = RANK == WORLD - 1
    for what, schema, target, words in [
            ("schema", other if odd else SCHEMA, path, "another canvas schema"),
            ("file", SCHEMA, os.path.join(DIR, "absent.safetensors") if odd else path, "absent.safetensors")]:
        extra = () if odd else ("refused the load", f"rank(s) [{WORLD - 1}]", "no rank changed")
        refused(lambda s=schema, t=target: cc.load_canvas_checkpoint(model, t, s), CheckpointError, words, *extra)
        for k, v in model.state_dict().items():
            assert torch.equal(local(v), before[k]), (what, k)
        dist.barrier()
    cc.load_canvas_checkpoint(model, path, SCHEMA)
    for (n, p), q in zip(model.named_parameters(), net(0).parameters()):
        assert torch.equal(p.full_tensor(), q), n
    dist.barrier()
    return "one-rank refusals raised on every rank, model unchanged; then loaded"


def prepare_other_file() -> None:
    """A file of another model (a head of another width) for the refused FSDP load."""
    if RANK == 0:
        m = net(0)
        m.head = nn.Linear(16, 5)
        cc.save_canvas_checkpoint(m, os.path.join(DIR, "ddp_other.safetensors"), SCHEMA)
    dist.barrier()


def run(rank: int, world: int, port: int, pg_timeout: float, names) -> None:
    global RANK, WORLD
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=pg_timeout))
    RANK, WORLD = rank, world
    prepare_other_file()
    for name in names:
        t0 = time.perf_counter()
        detail = globals()[f"scenario_{name}"]()
        if RANK == 0:
            print(f"OK {name} world={WORLD}: {detail} ({time.perf_counter() - t0:.1f} s)", flush=True)
    dist.barrier()
    dist.destroy_process_group()


def main(argv) -> int:
    """Fork ``--world`` ranks (this process has run no torch op, so forking is safe), wait for them
    at most ``--timeout`` seconds (then kill them), exit 1 when any failed."""
    global DIR
    opts = {}
    rest = []
    it = iter(argv)
    for a in it:
        if a in ("--world", "--port", "--timeout", "--dir", "--pg-timeout"):
            opts[a] = next(it)
        else:
            rest.append(a)
    world, port = int(opts["--world"]), int(opts["--port"])
    timeout, DIR = float(opts.get("--timeout", 240)), opts["--dir"]
    pg_timeout = float(opts.get("--pg-timeout", 20))
    return fork_ranks(lambda rank: run(rank, world, port, pg_timeout, rest), world, timeout)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
