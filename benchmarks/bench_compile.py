"""Compile time and step time of a 4-layer canvas model under ``torch.compile``, whole-model and
per block (regional: ``canvas_core.compile_blocks``), next to a dense model of the same size and
canvas-engineering's dispatcher, in one run.

Every model is ``Linear(d_in, D)`` on all positions, ``depth`` pre-norm blocks (attention + MLP,
residual) and a ``LayerNorm + Linear`` read-out; only the attention differs:

* ``dense``: QKV + ``scaled_dot_product_attention`` with the topology's dense bool mask + output
  projection (the baseline the issue names);
* ``canvas``: ``AttentionDispatcher`` (this package), used as ``x + attn.delta(norm(x))``;
* ``canvas-engineering``: its ``AttentionDispatcher`` (``x + attn(h) - h``).

Each configuration runs in its own process with an empty inductor cache (a cold compile, as a
user's first run).  Reported: eager forward+backward ms, compile seconds (first compiled
forward+backward minus one eager step), compiled step ms, operations dynamo captured, graphs, and
the compile-time ratio to the dense model compiled the same way.  Compile time is given twice:
wall-clock seconds and CPU seconds (the process plus the C++ compiler processes inductor starts;
``--compile-threads 1``, the default, keeps those compiles in the measured process tree), and the
CPU seconds are the figure to compare on a shared machine: they do not grow with other load.

    python benchmarks/bench_compile.py              # depth 4, both topologies
    python benchmarks/bench_compile.py --quick      # depth 2, causal topology only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from canvas_core import AttentionDispatcher, CanvasLayout, CanvasTopology, Connection, compile_blocks


def build_layout(T: int, D: int) -> CanvasLayout:
    return CanvasLayout(T=T, H=6, W=8, d_model=D, regions={
        "video": (0, T, 0, 5, 0, 8), "action": (0, T, 5, 6, 0, 4), "reward": (0, T, 5, 6, 4, 8)})


def build_topology(name: str) -> CanvasTopology:
    if name == "causal":
        return CanvasTopology.causal_temporal(["video", "action", "reward"])
    # a world-model mix of types: every link reads the same or the previous frame
    same, prev = dict(t_src=0, t_dst=0), dict(t_src=0, t_dst=-1)
    return CanvasTopology(connections=[
        Connection(src="video", dst="video", **same), Connection(src="video", dst="video", **prev),
        Connection(src="video", dst="action", **prev),
        Connection(src="action", dst="video", fn="pooling", **same),
        Connection(src="action", dst="action", fn="gated", **prev),
        Connection(src="reward", dst="video", fn="perceiver", **same),
        Connection(src="reward", dst="reward", fn="mamba", **prev),
    ])


class DenseAttention(nn.Module):
    def __init__(self, mask: torch.Tensor, D: int, H: int) -> None:
        super().__init__()
        self.H = H
        self.qkv, self.out = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.H, D // self.H).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        return self.out(o.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    def __init__(self, attn: nn.Module, D: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.norm1, self.norm2, self.attn = nn.LayerNorm(D), nn.LayerNorm(D), attn
        self.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        if self.kind == "canvas":
            x = x + self.attn.delta(h)
        elif self.kind == "dense":
            x = x + self.attn(h)
        else:  # canvas-engineering returns the updated state
            x = x + self.attn(h) - h
        return x + self.mlp(self.norm2(x))


class Model(nn.Module):
    def __init__(self, kind: str, topology: CanvasTopology, layout: CanvasLayout, depth: int, H: int, d_in: int):
        super().__init__()
        D = layout.d_model
        self.inp = nn.Linear(d_in, D)
        blocks = []
        for _ in range(depth):
            if kind == "canvas":
                attn = AttentionDispatcher(topology, layout, D, H)
            elif kind == "dense":
                attn = DenseAttention(topology.to_attention_mask(layout) > 0, D, H)
            else:
                import canvas_engineering as ce
                from canvas_engineering.dispatch import AttentionDispatcher as CEDispatcher

                ce_topology = ce.CanvasTopology(connections=[
                    ce.Connection(src=c.src, dst=c.dst, fn=c.fn, t_src=c.t_src, t_dst=c.t_dst, weight=c.weight)
                    for c in topology.connections])
                attn = CEDispatcher(ce_topology, layout_for_ce(layout), D, H)
            blocks.append(Block(attn, D, kind))
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, d_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.out(x)


def layout_for_ce(layout: CanvasLayout):
    import canvas_engineering as ce

    return ce.CanvasLayout(T=layout.T, H=layout.H, W=layout.W, d_model=layout.d_model,
                           regions={n: tuple(layout.regions[n].bounds) for n in layout.region_names})


def run_one(cfg: dict) -> dict:
    """One configuration, in this process (the parent starts one process per configuration)."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    torch.set_num_threads(cfg["threads"])
    layout = build_layout(cfg["frames"], cfg["d_model"])
    model = Model(cfg["kind"], build_topology(cfg["topology"]), layout, cfg["depth"], cfg["heads"], 16)
    x = torch.randn(cfg["batch"], layout.num_positions, 16)

    def step(m):
        m(x).pow(2).mean().backward()

    def cpu_now() -> float:  # this process and the finished compiler processes it started
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    step(model)
    c0, t0 = cpu_now(), time.perf_counter()
    step(model)
    eager, eager_cpu = time.perf_counter() - t0, cpu_now() - c0
    counters.clear()
    if cfg["how"] == "whole":
        target = torch.compile(model)
    else:
        compile_blocks(model)
        target = model
    c0 = cpu_now()
    t0 = time.perf_counter()
    step(target)
    first = time.perf_counter() - t0
    first_cpu = cpu_now() - c0
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        step(target)
        times.append(time.perf_counter() - t0)
    return {"eager_ms": eager * 1e3, "compile_s": max(first - eager, 0.0), "step_ms": min(times) * 1e3,
            "compile_cpu_s": max(first_cpu - eager_cpu, 0.0),
            "captured": int(counters["stats"]["calls_captured"]), "graphs": int(counters["stats"]["unique_graphs"]),
            "breaks": int(sum(counters["graph_break"].values()))}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--topologies", default="causal,world")
    p.add_argument("--compile-threads", type=int, default=1,
                   help="inductor compile workers (1: C++ compiles run as children of the timed process)")
    p.add_argument("--kinds", default="dense,canvas,canvas-engineering", help="models to run (comma list)")
    p.add_argument("--how", default="whole,per-block", help="whole, per-block or both")
    p.add_argument("--quick", action="store_true", help="depth 2, causal topology, no canvas-engineering")
    p.add_argument("--no-ce", action="store_true", help="skip canvas-engineering")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one configuration
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    if args.quick:
        args.depth, args.topologies, args.no_ce = 2, "causal", True
    try:
        import canvas_engineering  # noqa: F401
        have_ce = not args.no_ce
    except ImportError:
        have_ce = False
    rows = []
    for topo in args.topologies.split(","):
        kinds = ["dense", "canvas"] + (["canvas-engineering"] if have_ce and topo == "causal" else [])
        kinds = [k for k in kinds if k in args.kinds.split(",")]
        for kind in kinds:
            for how in args.how.split(","):
                cfg = dict(kind=kind, topology=topo, how=how, depth=args.depth, frames=args.frames,
                           d_model=args.d_model, heads=args.heads, batch=args.batch, threads=args.threads)
                with tempfile.TemporaryDirectory() as cache:
                    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TORCHINDUCTOR_FX_GRAPH_CACHE="0",
                               TORCHINDUCTOR_COMPILE_THREADS=str(args.compile_threads))
                    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], env=env,
                                          capture_output=True, text=True)
                if proc.returncode:
                    err = (proc.stderr.strip().splitlines() or ["?"])[-1][:80]
                    rows.append((topo, kind, how, None, err))
                    print(f"  {topo:7s} {kind:18s} {how:9s} FAILED: {err}", file=sys.stderr)
                    continue
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append((topo, kind, how, res, ""))
                print(f"  {topo:7s} {kind:18s} {how:9s} done: compile {res['compile_s']:.1f} s, "
                      f"{res['compile_cpu_s']:.1f} CPU s", file=sys.stderr)
    N = build_layout(args.frames, args.d_model).num_positions
    print(f"\ntorch.compile of a {args.depth}-layer model, N={N}, d_model={args.d_model}, batch {args.batch}, "
          f"{args.threads} threads, {args.compile_threads} compile worker(s), torch {torch.__version__} "
          "(cold inductor cache per row)\n")
    head = ("topology", "model", "compiled", "eager f+b ms", "compile s", "compile CPU s", "compiled f+b ms",
            "ops captured", "graphs", "compile vs dense (wall / CPU)")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    base = {(t, h): r for t, k, h, r, _ in rows if k == "dense" and r}
    for topo, kind, how, r, err in rows:
        if r is None:
            print(f"| {topo} | {kind} | {how} | failed: {err} |" + " |" * 6)
            continue
        b = base.get((topo, how))
        wall = r["compile_s"] / b["compile_s"] if b and b["compile_s"] else math.nan
        cpu = r["compile_cpu_s"] / b["compile_cpu_s"] if b and b["compile_cpu_s"] else math.nan
        print(f"| {topo} | {kind} | {how} | {r['eager_ms']:.1f} | {r['compile_s']:.1f} | {r['compile_cpu_s']:.1f} | "
              f"{r['step_ms']:.1f} | {r['captured']} | {r['graphs']} | {wall:.2f}x / {cpu:.2f}x |")


if __name__ == "__main__":
    main()
