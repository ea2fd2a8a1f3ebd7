"""A sequence-parallel test group: ``python sp_worker.py --world N --port P SCENARIO ... [--examples K]``
forks N gloo ranks that run the scenarios (``_launch.py`` starts it).

Every scenario compares the sequence-parallel result with the same computation on one process
(every rank also runs it whole, locally, as the reference).  Random cases come from hypothesis,
derandomized, so every rank draws the same cases in the same order; each case's verdict is agreed
by an all-reduce before hypothesis sees it, so the ranks stay in lockstep even when a case fails.
A line ``OK <scenario> <details>`` on stdout marks a scenario that passed.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch.nn.parallel import DistributedDataParallel

from _fork import fork_ranks  # this folder: the script's own directory is on sys.path
from canvas_core import AttentionDispatcher, CanvasLayout, CanvasTopology, Connection, RegionSpec
from canvas_core.runtime.sequence_parallel import (
    CanvasSharding,
    SequenceParallelCanvasAttention,
    SequenceParallelError,
    SequenceParallelWarning,
    parallelize_canvas,
    sequence_parallel_mesh,
    shard_canvas,
    unshard_canvas,
)

_spec = importlib.util.spec_from_file_location(
    "canvas_ref_strategies", Path(__file__).resolve().parents[1] / "_reference" / "strategies.py")
strategies = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(strategies)

NON_SOFTMAX = ("linear_attention", "pooling", "copy", "sigmoid_attention", "rwkv")
TOL = dict(rtol=1e-9, atol=1e-10)
RANK = WORLD = 0


def agree(ok: bool) -> bool:
    """True on every rank iff ``ok`` on every rank."""
    t = torch.tensor([0 if ok else 1])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t) == 0


def lockstep(check):
    """Run ``check()``; raise on every rank when it failed on any."""
    err = None
    try:
        check()
    except BaseException as e:  # noqa: BLE001 - re-raised below, after the ranks agree
        err = e
    if not agree(err is None):
        if err is not None:
            raise err
        raise AssertionError("the case failed on another rank")


def sp_equals_one_process(attn, x, active_regions=None, group=None):
    """Forward and gradients (parameters and input) of the SP layer equal the whole layer's."""
    g = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(7))
    xw = x.clone().requires_grad_()
    ref = attn(xw, active_regions)
    (ref * g).sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in attn.named_parameters() if p.grad is not None}
    attn.zero_grad(set_to_none=True)
    sp = SequenceParallelCanvasAttention(attn, group)
    xl = shard_canvas(x, sp).requires_grad_()
    out = sp(xl, active_regions)
    torch.testing.assert_close(out, shard_canvas(ref.detach(), sp), **TOL)
    torch.testing.assert_close(unshard_canvas(out, sp), ref.detach(), **TOL)
    (out * shard_canvas(g, sp)).sum().backward()
    torch.testing.assert_close(xl.grad, shard_canvas(xw.grad, sp), **TOL)
    for n, p in attn.named_parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        dist.all_reduce(grad, group=group)  # each rank holds its share's contribution
        torch.testing.assert_close(grad, ref_grads.get(n, torch.zeros_like(p)), **TOL, msg=lambda m, n=n: f"{n}: {m}")
    work = sp.work()
    assert sum(w["positions"] for w in work) == x.shape[1]
    if attn.qkv is not None and attn.n_heads % sp.size == 0:
        pairs = [w["pairs"] for w in work]
        assert max(pairs) == min(pairs), pairs  # heads split evenly: the same attention work per rank
    return sp


def scenario_random(examples: int) -> str:
    """Random layouts (periods, overlaps, uncovered positions), topologies (temporal offsets,
    weights, fills; queries without keys), kernel modes, head splits, non-softmax types."""
    cases = []

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck), print_blob=False)
    @given(st.data())
    def prop(data):
        layout = data.draw(strategies.layouts(max_T=4, max_side=3, max_regions=3))
        fns = data.draw(st.sampled_from([("cross_attention",), ("cross_attention",) + NON_SOFTMAX[:2],
                                         ("cross_attention", "copy", "rwkv"),
                                         ("cross_attention", "sigmoid_attention", "pooling")]))
        topo = data.draw(strategies.topologies(layout, fns=fns, max_conns=5))
        kernel = data.draw(st.sampled_from([None, "dense", "segments", "sparse"]))
        heads = data.draw(st.sampled_from([WORLD, 2 * WORLD, WORLD + 1]))
        d_model = heads * data.draw(st.sampled_from([1, 2]))
        batch = data.draw(st.integers(1, 2))
        names = sorted(layout.regions)
        active = data.draw(st.none() | st.sets(st.sampled_from(names)))
        seed = data.draw(st.integers(0, 2 ** 16))
        n = layout.num_positions
        if n < WORLD:  # too small to split: the error every rank must raise
            attn = AttentionDispatcher(topo, layout, d_model, heads).double()

            def refused():
                try:
                    SequenceParallelCanvasAttention(attn)
                except SequenceParallelError as e:
                    assert "too small" in str(e) and "sequence-parallel size" in str(e)
                else:
                    raise AssertionError("a canvas smaller than the group was accepted")
            lockstep(refused)
            return

        def check():
            torch.manual_seed(seed)
            attn = AttentionDispatcher(topo, layout, d_model, heads, kernel=kernel,
                                       kernel_options={"block_size": 4} if kernel == "sparse" else None).double()
            x = torch.randn(batch, n, d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
            sp = sp_equals_one_process(attn, x, active)
            cases.append((n, len(topo.connections), sp.gathered_types))

        lockstep(check)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SequenceParallelWarning)
        prop()
    gathered = sum(1 for c in cases if c[2])
    assert len(cases) >= examples // 2 and gathered >= 1, (len(cases), gathered)
    return f"{len(cases)} cases, {gathered} with gathered non-softmax types"


def scenario_fixed() -> str:
    """A hand-made case of each kind: a temporal topology with a period-2 region, a region that
    reads nothing, a non-softmax type of each builtin family, uneven heads."""
    layout = CanvasLayout(T=4, H=3, W=4, d_model=12, regions={
        "video": (0, 4, 0, 2, 0, 4), "slow": RegionSpec((0, 4, 2, 3, 0, 2), period=2),
        "idle": (0, 4, 2, 3, 2, 4)})
    for fn in NON_SOFTMAX:
        topo = CanvasTopology(connections=[
            Connection("video", "video", t_src=0, t_dst=-1, weight=0.5),
            Connection("video", "slow", weight=2.0),
            Connection("slow", "video", fn=fn, t_src=0, t_dst=0),
            Connection("idle", "slow", fn=fn, t_src=0, t_dst=-3)])  # no key at the first frames

        def check(topo=topo, fn=fn):
            torch.manual_seed(0)
            heads = WORLD + 1  # uneven: rank 0 computes one head more
            attn = AttentionDispatcher(topo, layout, 2 * heads, heads).double()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                SequenceParallelCanvasAttention(attn)
            assert any(issubclass(w.category, SequenceParallelWarning) and fn in str(w.message) for w in caught)
            x = torch.randn(2, layout.num_positions, 2 * heads, dtype=torch.float64)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SequenceParallelWarning)
                sp = sp_equals_one_process(attn, x)
            assert [w["heads"] for w in sp.work()] == [2] + [1] * (WORLD - 1)
        lockstep(check)
    return f"{len(NON_SOFTMAX)} non-softmax types"


def scenario_model() -> str:
    """A two-block model parallelized by ``parallelize_canvas``: loss and every gradient equal
    the whole model's, with sequence parallelism on a (dp, sp) mesh when the world allows."""
    layout = CanvasLayout(T=3, H=4, W=4, d_model=16, regions={
        "v": (0, 3, 0, 3, 0, 4), "a": RegionSpec((0, 3, 3, 4, 0, 4), period=1)})
    topo = CanvasTopology.causal_temporal(["v", "a"])

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.LayerNorm(16)
            self.attn = AttentionDispatcher(topo, layout, 16, 4)
            self.mlp = torch.nn.Linear(16, 16)

        def forward(self, x):
            return x + self.mlp(self.attn(self.norm(x)))

    torch.manual_seed(0)
    whole = torch.nn.Sequential(Block(), Block()).double()
    model = copy.deepcopy(whole)
    sp_size = 2 if WORLD % 2 == 0 else WORLD
    mesh = sequence_parallel_mesh(sp_size)
    dp_rank = mesh["dp"].get_local_rank()
    sharding = parallelize_canvas(model, mesh["sp"])
    assert isinstance(sharding, CanvasSharding) and sharding.size == sp_size
    x = torch.randn(2, layout.num_positions, 16, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(dp_rank))

    def check():
        ref = whole(x)
        ref.square().sum().backward()
        out = model(shard_canvas(x, sharding, mesh["sp"]))
        torch.testing.assert_close(out, shard_canvas(ref.detach(), sharding, mesh["sp"]), **TOL)
        out.square().sum().backward()
        for (n, p), q in zip(model.named_parameters(), whole.parameters()):
            dist.all_reduce(p.grad, group=mesh["sp"].get_group())
            torch.testing.assert_close(p.grad, q.grad, **TOL, msg=lambda m, n=n: f"{n}: {m}")

    def check_ddp():
        # DDP over the whole world averages over sp x dp ranks: the loss scaled by sp gives the
        # data-parallel mean of the whole-canvas gradients
        ddp_model = copy.deepcopy(whole)
        parallelize_canvas(ddp_model, mesh["sp"])
        ddp = DistributedDataParallel(ddp_model)
        (ddp(shard_canvas(x, sharding, mesh["sp"])).square().sum() * sp_size).backward()
        for (n, p), q in zip(ddp_model.named_parameters(), whole.parameters()):
            mean = q.grad.clone()
            dist.all_reduce(mean, group=mesh["dp"].get_group())
            torch.testing.assert_close(p.grad, mean / (WORLD // sp_size), **TOL, msg=lambda m, n=n: f"{n}: {m}")
    lockstep(check)
    lockstep(check_ddp)
    return f"sp={sp_size} dp={WORLD // sp_size}, with DDP"


def scenario_errors() -> str:
    """Bad settings raise SequenceParallelError on every rank before any collective: afterwards a
    barrier still works (no rank was left inside a collective)."""
    layout = CanvasLayout(T=1, H=1, W=WORLD - 1 or 1, d_model=8, regions={"r": (0, 1, 0, 1, 0, WORLD - 1 or 1)})
    attn = AttentionDispatcher(CanvasTopology(connections=[Connection("r", "r")]), layout, 8, 2)
    bad = {
        "too small": lambda: SequenceParallelCanvasAttention(attn),
        "does not divide": lambda: sequence_parallel_mesh(WORLD + 1),
        "n_heads": lambda: SequenceParallelCanvasAttention(
            AttentionDispatcher(CanvasTopology.causal_temporal(["v"]),
                                CanvasLayout(T=2, H=2, W=4, d_model=8, regions={"v": (0, 2, 0, 2, 0, 4)}),
                                8, 1)),
        "sharding is for": lambda: SequenceParallelCanvasAttention(
            attn, sharding=CanvasSharding.of(attn.plan, 1)),
        "positive integer": lambda: sequence_parallel_mesh(0),
    }
    for what, call in bad.items():
        try:
            call()
        except SequenceParallelError as e:
            assert what in str(e), (what, str(e))
        else:
            raise AssertionError(f"{what}: no SequenceParallelError")
    dist.barrier()
    return ", ".join(bad)


def scenario_mismatch() -> str:
    """Ranks given different layers (heads, links, width) are refused on every rank alike, naming
    the setting; afterwards a barrier still works (no rank was left inside a collective)."""
    layout = CanvasLayout(T=2, H=2, W=4, d_model=8, regions={"v": (0, 2, 0, 2, 0, 4)})
    causal, full = CanvasTopology.causal_temporal(["v"]), CanvasTopology(connections=[Connection("v", "v")])
    cases = {
        "n_heads": lambda: AttentionDispatcher(causal, layout, 8, 4 if RANK == 0 else 8),
        "links": lambda: AttentionDispatcher(causal if RANK == 0 else full, layout, 8, 4),
        "d_model": lambda: AttentionDispatcher(causal, CanvasLayout(T=2, H=2, W=4, d_model=8 * (1 + (RANK > 0)),
                                                                    regions={"v": (0, 2, 0, 2, 0, 4)}),
                                               8 * (1 + (RANK > 0)), 4),
    }
    for what, build in cases.items():
        try:
            SequenceParallelCanvasAttention(build())
        except SequenceParallelError as e:
            assert what in str(e) and "differs between rank 0" in str(e), (what, str(e))
        else:
            raise AssertionError(f"{what}: ranks with different layers were not refused")
    SequenceParallelCanvasAttention(AttentionDispatcher(causal, layout, 8, 4))  # the same layer: accepted
    dist.barrier()
    return ", ".join(cases)


def run(rank: int, world: int, port: int, args) -> None:
    global RANK, WORLD
    examples = 12
    if "--examples" in args:
        i = args.index("--examples")
        examples = int(args[i + 1])
        args = args[:i] + args[i + 2:]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=90))
    RANK, WORLD = rank, world
    for name in args:
        t0 = time.perf_counter()
        if name == "random":
            detail = scenario_random(examples)
        else:
            detail = globals()[f"scenario_{name}"]()
        if RANK == 0:
            print(f"OK {name} world={WORLD}: {detail} ({time.perf_counter() - t0:.1f} s)", flush=True)
    dist.barrier()
    dist.destroy_process_group()


def main(argv) -> int:
    """``--world N --port P SCENARIO ...``: fork N ranks from this process (imports paid once; it
    has run no torch op, so forking is safe), wait for them, exit with the worst exit code."""
    world = int(argv[argv.index("--world") + 1])
    port = int(argv[argv.index("--port") + 1])
    timeout = float(argv[argv.index("--timeout") + 1]) if "--timeout" in argv else 240.0
    rest = [a for i, a in enumerate(argv) if a not in ("--world", "--port", "--timeout")
            and (i == 0 or argv[i - 1] not in ("--world", "--port", "--timeout"))]
    return fork_ranks(lambda rank: run(rank, world, port, rest), world, timeout)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
