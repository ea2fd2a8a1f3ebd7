"""Ranks that differ in whether autograd records a sequence-parallel exchange are refused on every
rank before it (2 gloo CPU ranks; this file is also the worker script).  The backward of
``unshard_canvas`` and of a ``SequenceParallelCanvasAttention`` is an exchange too: a share that
requires grad on one rank only, or a forward under ``torch.no_grad()`` on one rank only, left the
recording rank's backward waiting for a partner (it met the next collective of the others, a
timeout inside gloo, or worse, one of the same size)."""

from __future__ import annotations

import importlib.util
import sys
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_autograd_differing_between_ranks_is_refused_on_every_rank(tmp_path):
    spec = importlib.util.spec_from_file_location("canvas_h6_launch", HERE / "_launch.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    out = launch.launch(2, "--pg-timeout", "15", worker=Path(__file__), timeout=150)
    assert "OK unshard, layer, alike" in out, out


def _refused(call, *words: str) -> None:
    from canvas_core.runtime.sequence_parallel import SequenceParallelError

    try:
        call()
    except SequenceParallelError as e:
        for w in words:
            assert w in str(e), (w, str(e))
        return
    raise AssertionError(f"no SequenceParallelError ({words})")


def _run(rank: int, world: int, port: int, pg_timeout: float) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=pg_timeout))
    from _canvas_case import LAYOUT, TOPO

    from canvas_core import AttentionDispatcher
    from canvas_core.runtime.sequence_parallel import SequenceParallelCanvasAttention, shard_canvas, unshard_canvas

    torch.manual_seed(0)
    sp = SequenceParallelCanvasAttention(AttentionDispatcher(TOPO, LAYOUT, 16, 4))
    x = torch.randn(2, LAYOUT.num_positions, 16, generator=torch.Generator().manual_seed(0))
    odd = rank == world - 1
    share = shard_canvas(x, sp).detach().requires_grad_(not odd)  # one rank's share needs no grad
    _refused(lambda: unshard_canvas(share, sp), "different autograd", "rank 0 autograd recording",
             f"rank {world - 1} no autograd", "torch.no_grad()")
    dist.barrier()
    with torch.no_grad():  # no rank records: unshard runs
        torch.testing.assert_close(unshard_canvas(share, sp), x)

    def layer_call():
        with torch.set_grad_enabled(not odd):  # a forward under no_grad on one rank only
            return sp(shard_canvas(x, sp))

    _refused(layer_call, "different autograd", "rank 0 autograd recording", f"rank {world - 1} no autograd")
    dist.barrier()
    whole = shard_canvas(x, sp).requires_grad_(True)  # alike on every rank: forward and backward run
    unshard_canvas(sp(whole), sp).sum().backward()
    assert whole.grad is not None and torch.isfinite(whole.grad).all()
    dist.barrier()
    if rank == 0:
        print("OK unshard, layer, alike", flush=True)
    dist.destroy_process_group()


def main(argv) -> int:
    sys.path.insert(0, str(HERE))
    from _fork import fork_ranks

    opts, it = {}, iter(argv)
    for a in it:
        opts[a] = next(it)
    world, port = int(opts["--world"]), int(opts["--port"])
    pg_timeout = float(opts.get("--pg-timeout", 15))
    return fork_ranks(lambda rank: _run(rank, world, port, pg_timeout), world, float(opts.get("--timeout", 150)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
