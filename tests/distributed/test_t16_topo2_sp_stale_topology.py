"""A SequenceParallelCanvasAttention refuses a topology whose connections changed after its layer
was built, as the plain layer does (SchemaError): when it is built and at every call, on the
softmax path and the gathered non-softmax path, with and without ``check_inputs``, eager and under
torch.compile.  It used to check the layout only and run the old connections silently.

With 2 gloo ranks (this file is also the worker script), a topology changed on one rank only makes
that rank raise the SchemaError and the other a SequenceParallelError before any exchange, and
wrapping such a layer is refused on every rank, instead of one rank waiting alone inside gloo.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from typing import List

import pytest

HERE = Path(__file__).resolve().parent
STALE = ("AttentionDispatcher (wrapped by SequenceParallelCanvasAttention) was built from this CanvasTopology "
         "before its connections were changed")
CASES = {"softmax": [("a", "b", None), ("b", "b", None)],
         "gathered": [("a", "b", "rwkv")],
         "both": [("a", "b", "rwkv"), ("b", "b", None)]}


def _topology(case: str):
    from canvas_core import CanvasTopology, Connection

    return CanvasTopology(connections=[Connection(s, d) if fn is None else Connection(s, d, fn=fn)
                                       for s, d, fn in CASES[case]])


def _build(case: str, check_inputs: bool = True):
    """(topology, the wrapped layer's dispatcher, the SP layer, a whole canvas) on the current group."""
    import torch

    from canvas_core import AttentionDispatcher, CanvasLayout
    from canvas_core.runtime.sequence_parallel import SequenceParallelCanvasAttention

    layout = CanvasLayout(T=2, H=2, W=4, d_model=8, regions={"a": (0, 2, 0, 1, 0, 4), "b": (0, 2, 1, 2, 0, 4)})
    topology = _topology(case)
    torch.manual_seed(0)
    attn = AttentionDispatcher(topology, layout, 8, n_heads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequenceParallelWarning for the gathered types
        sp = SequenceParallelCanvasAttention(attn, check_inputs=check_inputs)
    x = torch.randn(2, layout.num_positions, 8, generator=torch.Generator().manual_seed(1))
    return topology, attn, sp, x


def _add(topology) -> None:
    """One more connection (b reads a): other links, same N."""
    from canvas_core import Connection

    topology.connections.append(Connection("b", "a"))


@pytest.fixture
def group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="file://" + str(tmp_path / "pg"), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("check_inputs", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_t16_topo2_a_changed_topology_is_refused_as_by_the_plain_layer(group, case, check_inputs):
    import torch

    from canvas_core.errors import SchemaError
    from canvas_core.runtime.sequence_parallel import shard_canvas, unshard_canvas

    topology, attn, sp, x = _build(case, check_inputs)
    torch.testing.assert_close(unshard_canvas(sp(shard_canvas(x, sp)), sp), attn(x))
    _add(topology)
    with pytest.raises(SchemaError, match="AttentionDispatcher was built"):
        attn(x)
    with pytest.raises(SchemaError, match=re.escape(STALE)) as err:
        sp(shard_canvas(x, sp))
    assert "again from the changed topology" in str(err.value)
    with pytest.raises(SchemaError, match=re.escape(STALE)):
        sp.delta(shard_canvas(x, sp))
    topology.connections.pop()  # undone: runs again
    torch.testing.assert_close(unshard_canvas(sp(shard_canvas(x, sp)), sp), attn(x))


def test_t16_topo2_wrapping_a_layer_whose_topology_changed_is_refused(group):
    from canvas_core.errors import SchemaError
    from canvas_core.runtime.sequence_parallel import SequenceParallelCanvasAttention

    topology, attn, _, _ = _build("softmax")
    _add(topology)
    with pytest.raises(SchemaError, match=re.escape(STALE)):
        SequenceParallelCanvasAttention(attn)


@pytest.mark.parametrize("case", ["softmax", "gathered"])
def test_t16_topo2_a_compiled_sp_layer_refuses_a_changed_topology(group, case):
    import torch

    from canvas_core.errors import SchemaError
    from canvas_core.runtime.sequence_parallel import shard_canvas, unshard_canvas

    torch._dynamo.reset()
    topology, attn, sp, x = _build(case, check_inputs=False)
    compiled = torch.compile(sp, backend="eager")
    torch.testing.assert_close(unshard_canvas(compiled(shard_canvas(x, sp)), sp), attn(x))
    _add(topology)
    with pytest.raises(SchemaError, match=re.escape(STALE)):
        compiled(shard_canvas(x, sp))


def test_t16_topo2_a_topology_changed_on_one_rank_is_refused_on_every_rank_without_a_hang(tmp_path):
    spec = importlib.util.spec_from_file_location("canvas_t16_topo2_launch", HERE / "_launch.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    out = launch.launch(2, "--pg-timeout", "10", worker=Path(__file__), timeout=150)
    assert "OK stale topology: one rank, every rank, wrapping" in out, out


def _expect(call, error, *words: str) -> None:
    try:
        call()
    except error as e:
        for w in words:
            assert w in str(e), (w, str(e))
        return
    raise AssertionError(f"no {error.__name__} ({words})")


def _case(case: str, rank: int, world: int) -> None:
    import torch
    import torch.distributed as dist

    from canvas_core.errors import SchemaError
    from canvas_core.runtime.sequence_parallel import (
        SequenceParallelCanvasAttention,
        SequenceParallelError,
        shard_canvas,
        unshard_canvas,
    )

    odd = rank == world - 1
    topology, attn, sp, x = _build(case)

    def call(layer=sp):
        return layer(shard_canvas(x, layer))

    torch.testing.assert_close(unshard_canvas(call(), sp), attn(x))
    if odd:
        _add(topology)  # on the last rank only: it says why, the others that it refused
        _expect(call, SchemaError, STALE)
    else:
        _expect(call, SequenceParallelError, f"rank(s) [{world - 1}] refused")
    dist.barrier()
    # wrapping it again: the last rank's layer is stale, every rank refuses (agreed on at the build)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _expect(lambda: SequenceParallelCanvasAttention(attn), SequenceParallelError,
                "layout and topology unchanged since the layer was built differs", "rank(s) [1] (False)")
    dist.barrier()
    topology.connections.pop() if odd else None  # undone: the group still works
    torch.testing.assert_close(unshard_canvas(call(), sp), attn(x))
    dist.barrier()


def _run(rank: int, world: int, port: int, pg_timeout: float) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=pg_timeout))
    for case in ("softmax", "gathered"):
        _case(case, rank, world)
    if rank == 0:
        print("OK stale topology: one rank, every rank, wrapping", flush=True)
    dist.destroy_process_group()


def main(argv: List[str]) -> int:
    sys.path.insert(0, str(HERE))
    from _fork import fork_ranks

    opts, it = {}, iter(argv)
    for a in it:
        opts[a] = next(it)
    world, port = int(opts["--world"]), int(opts["--port"])
    pg_timeout = float(opts.get("--pg-timeout", 10))
    return fork_ranks(lambda rank: _run(rank, world, port, pg_timeout), world, float(opts.get("--timeout", 150)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
