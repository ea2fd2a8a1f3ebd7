"""A SequenceParallelCanvasAttention refuses a layout changed after its layer was built, as the plain
layer does (SchemaError), on the softmax path and the gathered non-softmax path, with and without
``check_inputs``, eager and under torch.compile.  It used to run the old layout's links silently.

With 2 gloo ranks (this file is also the worker script), a layout changed on one rank only makes
that rank raise the SchemaError and the other a SequenceParallelError before any exchange, instead
of leaving it waiting inside gloo.
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
STALE = "AttentionDispatcher (wrapped by SequenceParallelCanvasAttention) was built from this CanvasLayout before it was changed"
# (link list, what runs): softmax only, a non-softmax type only (gathered), both
CASES = {"softmax": [("a", "b", None), ("b", "b", None)],
         "gathered": [("a", "b", "rwkv")],
         "both": [("a", "b", "rwkv"), ("b", "b", None)]}


def _topology(case: str):
    from canvas_core import CanvasTopology, Connection

    return CanvasTopology(connections=[Connection(s, d) if fn is None else Connection(s, d, fn=fn)
                                       for s, d, fn in CASES[case]])


def _build(case: str, check_inputs: bool = True):
    """(layout, the wrapped layer's dispatcher, the SP layer, a whole canvas) on the current group."""
    import torch

    from canvas_core import AttentionDispatcher, CanvasLayout
    from canvas_core.runtime.sequence_parallel import SequenceParallelCanvasAttention

    layout = CanvasLayout(T=2, H=2, W=4, d_model=8, regions={"a": (0, 2, 0, 1, 0, 4), "b": (0, 2, 1, 2, 0, 4)})
    torch.manual_seed(0)
    attn = AttentionDispatcher(_topology(case), layout, 8, n_heads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequenceParallelWarning for the gathered types
        sp = SequenceParallelCanvasAttention(attn, check_inputs=check_inputs)
    x = torch.randn(2, layout.num_positions, 8, generator=torch.Generator().manual_seed(1))
    return layout, attn, sp, x


def _shrink(layout) -> None:
    """Region a loses half its width in place: same N, other links."""
    from canvas_core import RegionSpec

    layout.regions["a"] = RegionSpec((0, 2, 0, 1, 0, 2))


# --- one rank, in this process ----------------------------------------------------------------
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
def test_a_changed_layout_is_refused_as_by_the_plain_layer(group, case, check_inputs):
    import torch

    from canvas_core.errors import CanvasError, SchemaError
    from canvas_core.runtime.sequence_parallel import shard_canvas, unshard_canvas

    layout, attn, sp, x = _build(case, check_inputs)
    torch.testing.assert_close(unshard_canvas(sp(shard_canvas(x, sp)), sp), attn(x))  # unchanged: as the layer
    _shrink(layout)
    with pytest.raises(SchemaError, match="AttentionDispatcher was built"):
        attn(x)
    with pytest.raises(SchemaError, match=re.escape(STALE)) as err:
        sp(shard_canvas(x, sp))
    assert isinstance(err.value, CanvasError) and "again from the changed layout" in str(err.value)
    with pytest.raises(SchemaError, match=re.escape(STALE)):
        sp.delta(shard_canvas(x, sp))


def test_wrapping_a_layer_whose_layout_changed_is_refused_naming_the_layer(group):
    from canvas_core.errors import SchemaError
    from canvas_core.runtime.sequence_parallel import SequenceParallelCanvasAttention

    layout, attn, _, _ = _build("softmax")
    _shrink(layout)
    with pytest.raises(SchemaError, match=re.escape(STALE)) as err:
        SequenceParallelCanvasAttention(attn)
    assert "build the AttentionDispatcher (wrapped by SequenceParallelCanvasAttention) again" in str(err.value)


@pytest.mark.parametrize("case", ["softmax", "gathered"])
def test_a_compiled_sp_layer_refuses_a_changed_layout(group, case):
    import torch

    from canvas_core.errors import SchemaError
    from canvas_core.runtime.sequence_parallel import shard_canvas, unshard_canvas

    torch._dynamo.reset()
    layout, attn, sp, x = _build(case, check_inputs=False)
    compiled = torch.compile(sp, backend="eager")
    torch.testing.assert_close(unshard_canvas(compiled(shard_canvas(x, sp)), sp), attn(x))
    layout.t_current = 1  # not part of the geometry: still runs
    torch.testing.assert_close(unshard_canvas(compiled(shard_canvas(x, sp)), sp), attn(x))
    _shrink(layout)
    with pytest.raises(SchemaError, match=re.escape(STALE)):
        compiled(shard_canvas(x, sp))


# --- two gloo ranks ---------------------------------------------------------------------------
def test_a_layout_changed_on_one_rank_is_refused_on_every_rank_without_a_hang(tmp_path):
    spec = importlib.util.spec_from_file_location("canvas_fx15c_launch", HERE / "_launch.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    out = launch.launch(2, "--pg-timeout", "10", worker=Path(__file__), timeout=150)
    assert "OK stale layout: one rank, every rank, no check" in out, out


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

    from canvas_core import AttentionDispatcher
    from canvas_core.errors import SchemaError
    from canvas_core.runtime.sequence_parallel import (
        SequenceParallelCanvasAttention,
        SequenceParallelError,
        shard_canvas,
        unshard_canvas,
    )

    odd = rank == world - 1
    layout, attn, sp, x = _build(case)

    def call(layer=sp):
        return layer(shard_canvas(x, layer))

    torch.testing.assert_close(unshard_canvas(call(), sp), attn(x))
    if odd:
        _shrink(layout)  # on the last rank only: it says why, the others that it refused
        _expect(call, SchemaError, STALE)
    else:
        _expect(call, SequenceParallelError, f"rank(s) [{world - 1}] refused")
    dist.barrier()
    if not odd:
        _shrink(layout)  # now on every rank: each says why itself
    _expect(call, SchemaError, STALE)
    dist.barrier()
    other, _, unchecked, _ = _build(case, check_inputs=False)
    _shrink(other)
    _expect(lambda: call(unchecked), SchemaError, STALE)  # refused before any exchange
    dist.barrier()
    # a layer built again on the changed layout runs, and the group still works
    fresh = AttentionDispatcher(_topology(case), layout, 8, n_heads=2)
    fresh.load_state_dict(attn.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sp2 = SequenceParallelCanvasAttention(fresh)
    torch.testing.assert_close(unshard_canvas(call(sp2), sp2), fresh(x))
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
        print("OK stale layout: one rank, every rank, no check", flush=True)
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
