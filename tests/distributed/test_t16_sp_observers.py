"""A ``SequenceParallelCanvasAttention`` whose wrapped layer has update observers
(``CanvasAttention.observe_updates``: ``record_telemetry``, ``verify_structure``, a user's own) refuses to
run with a ``SequenceParallelError`` naming the layer, the observers' owner and what to do instead.

It used to run without calling them: a recording opened before ``parallelize_canvas`` (or one of the
wrapped layer itself) silently measured nothing (``forwards == 0``, no values), a user's observer was
silently never called, and ``verify_structure`` of a parallelized model failed with an unrelated
``ShapeError`` (2 ranks) or claimed the model "ran none of its CanvasAttention layers" (1 rank).

``verify_structure`` and ``canvas_core.incremental`` refuse a parallelized model up front (naming the
wrapped layers, no collective: verify on one rank used to wait in the exchange until the group's
timeout, and a rollout whose frame was as long as a rank's share ran with wrong outputs), a wrapped
layer refuses a rollout installed on it, and compiled code sees observers added after its first call.

With 2 gloo ranks (this file is also the worker script) every rank refuses before any exchange, also
when only one rank has an observer, and a forward without observers still makes exactly the
collectives it made before (one agreement ``all_gather``, two ``all_to_all``).
"""

from __future__ import annotations

import importlib.util
import re
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, List, Tuple

import pytest

HERE = Path(__file__).resolve().parent
OWNER = "AttentionDispatcher (wrapped by SequenceParallelCanvasAttention) has 1 update observer(s)"


def _build(returns: str = "state", check_inputs: bool = True) -> Tuple[Any, Any, Any, Any, Any]:
    """(layout, topology, a plain two-layer model, the same model parallelized on the current
    group, a whole canvas); the sharding is ``parallel.sharding``."""
    import torch
    from torch import nn

    from canvas_core import AttentionDispatcher, CanvasLayout, CanvasTopology, Connection
    from canvas_core.runtime.sequence_parallel import parallelize_canvas

    layout = CanvasLayout(T=2, H=2, W=4, d_model=8, regions={"a": (0, 2, 0, 1, 0, 4), "b": (0, 2, 1, 2, 0, 4)})
    topology = CanvasTopology(connections=[Connection("a", "b"), Connection("b", "b")])

    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(*(AttentionDispatcher(topology, layout, 8, n_heads=2, returns=returns)
                               for _ in range(2)))

    parallel = net()
    parallel.sharding = parallelize_canvas(parallel, check_inputs=check_inputs)
    x = torch.randn(2, layout.num_positions, 8, generator=torch.Generator().manual_seed(1))
    return layout, topology, net(), parallel, x


def _run(model: Any, x: Any) -> Any:
    """The parallelized ``model`` on the whole canvas ``x``, gathered back."""
    import torch

    from canvas_core.runtime.sequence_parallel import shard_canvas, unshard_canvas

    with torch.no_grad():
        return unshard_canvas(model(shard_canvas(x, model.sharding)), model.sharding)


# --- one rank, in this process ----------------------------------------------------------------
@pytest.fixture
def group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="file://" + str(tmp_path / "pg"), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("returns", ["state", "delta"])
def test_a_recording_opened_before_parallelize_canvas_is_refused_not_empty(group, returns):
    import torch

    import canvas_core as cc
    from canvas_core.runtime.sequence_parallel import SequenceParallelError, parallelize_canvas

    _, _, plain, _, x = _build(returns)
    model = _build(returns)[2]
    with cc.record_telemetry(model) as tel:
        sharding = parallelize_canvas(model)
        model.sharding = sharding
        with pytest.raises(SequenceParallelError, match=re.escape(OWNER)) as err:
            _run(model, x)
    msg = str(err.value)
    assert "record_telemetry / telemetry" in msg and "telemetry(plain_model, x_whole)" in msg, msg
    assert "end the recording (one opened on the model before parallelize_canvas, or one of the wrapped layer, " \
        "sp_layer.attn)" in msg, msg
    assert "(from record_telemetry / telemetry);" in msg and "['" not in msg, msg  # plain text, no Python list
    assert tel.forwards == 0
    torch.testing.assert_close(_run(model, x), plain(x))  # the recording is over: runs as before


def test_a_recording_of_the_wrapped_layer_and_its_delta_are_refused(group):
    import canvas_core as cc
    from canvas_core.runtime.sequence_parallel import SequenceParallelError, shard_canvas

    _, _, _, model, x = _build()
    layer = model[0]
    with cc.record_telemetry(layer.attn):
        for call in (layer, layer.delta):
            with pytest.raises(SequenceParallelError, match=re.escape(OWNER)):
                call(shard_canvas(x, layer))


def test_telemetry_of_a_parallelized_model_names_the_layers_as_plain_text(group):
    import canvas_core as cc
    from canvas_core.runtime.sequence_parallel import SequenceParallelError

    model = _build()[3]
    with pytest.raises(SequenceParallelError, match=re.escape("record_telemetry: layer(s) 0, 1 run sequence-parallel")):
        cc.record_telemetry(model).__enter__()


@pytest.mark.parametrize("check_inputs", [True, False])
def test_a_user_observer_is_refused_by_name_and_runs_again_once_removed(group, check_inputs):
    import torch

    from canvas_core.errors import CanvasError

    _, _, plain, model, x = _build(check_inputs=check_inputs)
    calls: List[Any] = []

    def count_updates(layer: Any, h: Any, active: Any) -> None:
        calls.append(tuple(h.shape))

    handle = model[1].attn.observe_updates(count_updates)
    with pytest.raises(CanvasError, match=re.escape(OWNER)) as err:
        _run(model, x)
    assert "(from count_updates);" in str(err.value) and "handle.remove()" in str(err.value)
    assert "['" not in str(err.value), str(err.value)
    assert calls == []
    handle.remove()
    torch.testing.assert_close(_run(model, x), plain(x))


VERIFY = "verify_structure: layer(s) 0, 1 of Sequential run sequence-parallel (SequenceParallelCanvasAttention"


@pytest.mark.parametrize("given", [False, True])
def test_verify_structure_of_a_parallelized_model_is_refused_up_front(group, given, monkeypatch):
    """Refused before any probe (so before any forward and its agreement collective), naming the
    wrapped layers and the fix; it used to surface the observer refusal from inside a forward."""
    import canvas_core as cc
    from canvas_core.runtime.sequence_parallel import SequenceParallelCanvasAttention, SequenceParallelError

    layout, topology, plain, model, x = _build()
    assert cc.verify_structure(plain).ok

    def no_forward(*a: Any, **k: Any) -> Any:
        raise AssertionError("verify_structure ran a sequence-parallel forward")

    monkeypatch.setattr(SequenceParallelCanvasAttention, "forward", no_forward)
    kwargs = dict(layout=layout, topology=topology, layers=2) if given else {}
    with pytest.raises(SequenceParallelError, match=re.escape(VERIFY)) as err:
        cc.verify_structure(model, **kwargs)
    assert "Verify the model before parallelize_canvas, or a plain copy" in str(err.value)
    assert "verify_structure(plain_model)" in str(err.value)
    with pytest.raises(SequenceParallelError, match=re.escape("verify_structure: layer(s) <model> of "
                                                              "SequenceParallelCanvasAttention run")):
        cc.verify_structure(model[0])
    assert not model[0].attn.__dict__.get("_update_observers")  # nothing was attached


def _causal_build() -> Tuple[Any, Any, Any, Any]:
    """(layout, a plain causal two-layer model, the same model parallelized, a canvas)."""
    import torch
    from torch import nn

    from canvas_core import AttentionDispatcher, CanvasLayout, CanvasTopology, Connection
    from canvas_core.runtime.sequence_parallel import parallelize_canvas

    layout = CanvasLayout(T=2, H=2, W=4, d_model=8, regions={"a": (0, 2, 0, 1, 0, 4), "b": (0, 2, 1, 2, 0, 4)})
    topology = CanvasTopology(connections=[Connection("a", "b", t_src=0, t_dst=0), Connection("b", "b", t_src=0, t_dst=0),
                                           Connection("b", "b", t_src=0, t_dst=-1)])

    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(*(AttentionDispatcher(topology, layout, 8, n_heads=2) for _ in range(2))).eval()

    parallel = net()
    parallel.sharding = parallelize_canvas(parallel)
    return layout, net(), parallel, torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(1))


ROLLOUT = "incremental(): layer(s) 0, 1 of Sequential run sequence-parallel (SequenceParallelCanvasAttention"


def test_a_rollout_of_a_parallelized_model_is_refused_when_made(group):
    import torch

    import canvas_core as cc
    from canvas_core.runtime.incremental import RolloutError

    layout, plain, model, x = _causal_build()
    with pytest.raises(RolloutError, match=re.escape(ROLLOUT)) as err:
        cc.incremental(model, layout)
    assert "load_canvas_checkpoint(plain_model, path, schema)" in str(err.value)
    assert "incremental(plain_model, layout)" in str(err.value)
    with torch.no_grad(), cc.incremental(plain, layout) as roll:  # the plain copy rolls out as before
        torch.testing.assert_close(roll.step(x[:, :8]), plain(x)[:, :8])


def test_a_wrapped_layer_refuses_a_rollout_installed_on_it(group):
    """Defence in depth: a model parallelized inside ``with incremental(...)`` (the refusal at the
    rollout's construction cannot see it) refuses the step instead of running on a frame as a share."""
    import torch

    import canvas_core as cc
    from canvas_core.runtime.sequence_parallel import SequenceParallelError, parallelize_canvas

    layout, plain, _, x = _causal_build()
    model = _causal_build()[1]
    with torch.no_grad(), cc.incremental(model, layout) as roll:
        model.sharding = parallelize_canvas(model)
        with pytest.raises(SequenceParallelError, match=re.escape(
                "AttentionDispatcher (wrapped by SequenceParallelCanvasAttention) is inside a rollout")) as err:
            roll.step(x[:, :8])
    assert "incremental(plain_model, layout)" in str(err.value)
    torch.testing.assert_close(_run(model, x), plain(x))  # after the rollout: runs as before


@pytest.mark.parametrize("whole", [False, True])
def test_compiled_code_sees_observers_added_and_removed_after_its_first_call(group, whole):
    """An observer added after the first compiled call (or a recording of ``sp_layer.attn``) used to
    be skipped without a word: dynamo kept no guard on the layer's observer table."""
    import torch

    import canvas_core as cc
    from canvas_core.runtime.sequence_parallel import SequenceParallelError, shard_canvas

    _, _, plain, model, x = _build()
    compiled = torch.compile(model if whole else model[1], backend="eager")
    xs = shard_canvas(x, model.sharding)
    with torch.no_grad():
        compiled(xs)
        handle = model[1].attn.observe_updates(lambda *a: None)
        with pytest.raises(SequenceParallelError, match=re.escape("AttentionDispatcher (wrapped by "
                                                                  "SequenceParallelCanvasAttention) has 1")):
            compiled(xs)
        handle.remove()
        compiled(xs)
        with cc.record_telemetry(model[1].attn):
            with pytest.raises(SequenceParallelError, match="record_telemetry / telemetry"):
                compiled(xs)
        if whole:
            torch.testing.assert_close(cc.unshard_canvas(compiled(xs), model.sharding), plain(x))


# --- two gloo ranks ---------------------------------------------------------------------------
def test_every_rank_refuses_observed_layers_without_a_hang(tmp_path):
    spec = importlib.util.spec_from_file_location("canvas_t16_sp_launch", HERE / "_launch.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    out = launch.launch(2, "--pg-timeout", "10", worker=Path(__file__), timeout=150)
    assert "OK observers: telemetry, one rank, verify, rollout, collectives" in out, out


def _expect(call: Callable[[], Any], *words: str) -> None:
    from canvas_core.runtime.sequence_parallel import SequenceParallelError

    try:
        call()
    except SequenceParallelError as e:
        for w in words:
            assert w in str(e), (w, str(e))
        return
    raise AssertionError(f"no SequenceParallelError ({words})")


def _counting(names: Tuple[str, ...]):
    """Patch the ``torch.distributed`` collectives ``names`` to count their calls; (counts, undo)."""
    import torch.distributed as dist

    counts = {n: 0 for n in names}
    saved = {n: getattr(dist, n) for n in names}

    def wrap(n: str) -> Callable:
        def call(*args: Any, **kwargs: Any) -> Any:
            counts[n] += 1
            return saved[n](*args, **kwargs)
        return call

    for n in names:
        setattr(dist, n, wrap(n))
    return counts, lambda: [setattr(dist, n, f) for n, f in saved.items()]


def _scenarios(rank: int, world: int) -> None:
    import torch
    import torch.distributed as dist

    import canvas_core as cc
    from canvas_core.runtime.sequence_parallel import parallelize_canvas

    last = rank == world - 1
    _, _, plain, _, x = _build()
    want = plain(x)
    # a recording opened on every rank before the model was parallelized
    model = _build()[2]
    with cc.record_telemetry(model) as tel:
        model.sharding = parallelize_canvas(model)
        _expect(lambda: _run(model, x), OWNER, "record_telemetry / telemetry")
    assert tel.forwards == 0
    dist.barrier()
    # an observer on the last rank only: it says why, the others that it refused; nobody waits
    handle = model[0].attn.observe_updates(lambda *a: None) if last else None
    _expect(lambda: _run(model, x), OWNER if last else f"rank(s) [{world - 1}] refused")
    if handle is not None:
        handle.remove()
    dist.barrier()
    # verify_structure on every rank, then on rank 0 alone: refused at once, no collective to wait in
    _expect(lambda: cc.verify_structure(model), VERIFY)
    if rank == 0:
        start = time.monotonic()
        _expect(lambda: cc.verify_structure(model), VERIFY)
        assert time.monotonic() - start < 5, time.monotonic() - start  # the group's timeout is 10 s
    dist.barrier()
    # a rollout: a frame (8 positions) is as long as a rank's share here, so it used to run, wrong
    layout, _, causal, _ = _causal_build()
    try:
        cc.incremental(causal, layout)
    except cc.RolloutError as e:
        assert ROLLOUT in str(e), str(e)
    else:
        raise AssertionError("a rollout of a parallelized model was made")
    dist.barrier()
    # without observers: the result and the exchanges are as before
    counts, undo = _counting(("all_gather", "all_to_all_single", "all_to_all"))
    try:
        sharding = model.sharding
        with torch.no_grad():
            got = model(cc.shard_canvas(x, sharding))
    finally:
        undo()
    assert counts == {"all_gather": 2, "all_to_all_single": 4, "all_to_all": 0}, counts  # per layer: 1 + 2
    torch.testing.assert_close(cc.unshard_canvas(got, sharding), want)
    dist.barrier()


def _worker(rank: int, world: int, port: int, pg_timeout: float) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=pg_timeout))
    _scenarios(rank, world)
    if rank == 0:
        print("OK observers: telemetry, one rank, verify, rollout, collectives", flush=True)
    dist.destroy_process_group()


def main(argv: List[str]) -> int:
    sys.path.insert(0, str(HERE))
    from _fork import fork_ranks

    opts, it = {}, iter(argv)
    for a in it:
        opts[a] = next(it)
    world, port = int(opts["--world"]), int(opts["--port"])
    pg_timeout = float(opts.get("--pg-timeout", 10))
    return fork_ranks(lambda rank: _worker(rank, world, port, pg_timeout), world, float(opts.get("--timeout", 150)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
