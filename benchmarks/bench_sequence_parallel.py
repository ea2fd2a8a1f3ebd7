"""Sequence parallelism on CPU processes: per-rank activation memory and time at 1, 2, 4 ranks.

One pre-norm block (LayerNorm, canvas attention, MLP; residuals) on a canvas of 16,384 positions
(T = 8 frames of 32 x 64: a video region plus one-row action and reward regions, the
``bench_canvas.py`` canvas) with the ``causal_temporal`` topology, ``d_model`` 64, 4 heads,
batch 1, float32.  With P ranks (gloo, one thread each, forked from this process) every rank
holds N / P positions and runs :class:`SequenceParallelCanvasAttention`; P = 1 is the plain
layer on one process (no wrapper, no collective).  Columns, per rank (the largest over ranks):

* ``saved MiB``: bytes of the tensors autograd keeps for backward during the forward (unique
  storages): the activation memory training pays per layer;
* ``peak MiB``: high-water mark of the process's resident memory during forward + backward,
  above its level before (``/proc/self/status`` VmHWM, reset first);
* ``fwd ms`` / ``f+b ms``: median wall time of forward and of forward + backward;
* ``sent MiB``: bytes the rank sends per forward (``CanvasSharding.communication``; backward
  sends as much again).

Timings of several processes on a small shared machine are noisy: with P > cores the ranks
share cores, so only the memory columns scale cleanly there.

    python benchmarks/bench_sequence_parallel.py            # P = 1, 2, 4
    python benchmarks/bench_sequence_parallel.py --write docs/performance.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from canvas_core import AttentionDispatcher, CanvasLayout, CanvasTopology
from canvas_core.runtime.sequence_parallel import CanvasSharding, SequenceParallelCanvasAttention, shard_canvas

MARK = "<!-- bench_sequence_parallel table -->"


def build(T: int, h: int, w: int, d_model: int, heads: int):
    layout = CanvasLayout(T=T, H=h, W=w, d_model=d_model, regions={
        "video": (0, T, 0, h - 1, 0, w), "action": (0, T, h - 1, h, 0, w // 2),
        "reward": (0, T, h - 1, h, w // 2, w)})
    topo = CanvasTopology.causal_temporal(list(layout.regions))
    return layout, topo


class Block(nn.Module):
    def __init__(self, attn: nn.Module, d: int) -> None:
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = attn
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        h = self.n1(x)
        x = x + self.attn(h) - h
        return x + self.mlp(self.n2(x))


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def measure(args, P: int, rank: int, port: int, out_path: str) -> None:
    torch.set_num_threads(1)
    if P > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=P)
    layout, topo = build(args.frames, args.height, args.width, args.d_model, args.heads)
    torch.manual_seed(0)
    attn = AttentionDispatcher(topo, layout, args.d_model, args.heads)
    layer = SequenceParallelCanvasAttention(attn) if P > 1 else attn
    block = Block(layer, args.d_model)
    x_full = torch.randn(1, layout.num_positions, args.d_model, generator=torch.Generator().manual_seed(1))
    x = shard_canvas(x_full, layer) if P > 1 else x_full
    x.requires_grad_()

    def step(backward: bool):
        if P > 1:
            dist.barrier()
        t0 = time.perf_counter()
        y = block(x)
        if backward:
            y.square().mean().backward()
        return time.perf_counter() - t0

    step(True)  # warm-up (kernel buffers, allocator)
    # activation memory: unique storages autograd saves during one forward
    seen, saved = set(), 0

    def pack(t):
        nonlocal saved
        st = t.untyped_storage()
        key = st.data_ptr()
        if key not in seen:
            seen.add(key)
            saved += st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = block(x)
    del y
    base = _rss_mib("VmRSS")
    _reset_peak()
    step(True)
    peak = _rss_mib("VmHWM") - base
    fwd = [0.0] * args.repeats
    fb = [0.0] * args.repeats
    for i in range(args.repeats):
        with torch.no_grad():
            fwd[i] = step(False)
        fb[i] = step(True)
    mine = {"rank": rank, "saved": saved / 2 ** 20, "peak": peak, "fwd": statistics.median(fwd) * 1e3,
            "fb": statistics.median(fb) * 1e3, "positions": x.shape[1]}
    allr = [mine]
    if P > 1:
        allr = [None] * P
        dist.all_gather_object(allr, mine)
        dist.destroy_process_group()
    if rank == 0:
        sharding = CanvasSharding.of(attn, P)
        comm = sharding.communication(attn, batch=1, element_bytes=4)
        work = sharding.work(attn)
        res = {"P": P, "n": layout.num_positions, "ranks": allr, "comm": [c["total"] / 2 ** 20 for c in comm],
               "heads": [w["heads"] for w in work], "pair_heads": [w["pairs"] * args.heads for w in work]}
        with open(out_path, "w") as f:
            json.dump(res, f)


def run_group(args, P: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    pids = []
    for rank in range(P):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                measure(args, P, rank, port, path)
            except BaseException:  # noqa: BLE001 - printed; the exit code tells the parent
                import traceback

                traceback.print_exc()
                code = 1
            os._exit(code)
        pids.append(pid)
    deadline, failed = time.monotonic() + args.timeout, []
    for pid in pids:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                if os.waitstatus_to_exitcode(status):
                    failed.append(pid)
                break
            if time.monotonic() > deadline:
                for p in pids:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                raise SystemExit(f"P={P}: timed out after {args.timeout} s")
            time.sleep(0.05)
    if failed:
        raise SystemExit(f"P={P}: {len(failed)} rank(s) failed")
    with open(path) as f:
        res = json.load(f)
    os.unlink(path)
    return res


def table(results, args) -> str:
    base = results[0]["ranks"][0]
    lines = [
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs (shared), torch {torch.__version__}, gloo, 1 thread per rank, "
        f"median of {args.repeats}.",
        f"Canvas N = {results[0]['n']} (T = {args.frames}, {args.height} x {args.width}), causal_temporal, "
        f"d_model {args.d_model}, {args.heads} heads, batch 1, float32; one block (norm, attention, MLP).",
        "",
        "| ranks P | positions / rank | heads / rank | linked pairs x heads / rank (M) | saved MiB / rank | "
        "saved vs P=1 | peak MiB / rank | fwd ms (max rank) | f+b ms (max rank) | f+b vs P=1 | sent MiB / rank / fwd |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ranks = r["ranks"]
        saved = max(x["saved"] for x in ranks)
        fb = max(x["fb"] for x in ranks)
        pairs = max(r["pair_heads"])
        lines.append(
            f"| {r['P']} | {max(x['positions'] for x in ranks)} | {max(r['heads'])} | {pairs / 1e6:.1f} | "
            f"{saved:.1f} | {saved / base['saved']:.2f} | {max(x['peak'] for x in ranks):.1f} | "
            f"{max(x['fwd'] for x in ranks):.0f} | {fb:.0f} | {fb / base['fb']:.2f} | {max(r['comm']):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="1,2,4", help="comma-separated group sizes")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--height", type=int, default=32)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--write", metavar="MD", help="replace the table between the markers in this page")
    args = p.parse_args(argv)
    results = []
    for P in (int(s) for s in args.ranks.split(",")):
        t0 = time.perf_counter()
        results.append(run_group(args, P))
        print(f"P={P} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    text = table(results, args)
    print(text)
    if args.write:
        page = Path(args.write)
        body = page.read_text()
        block = f"{MARK}\n{text}\n{MARK}"
        if body.count(MARK) == 2:
            body = re.sub(re.escape(MARK) + ".*?" + re.escape(MARK), lambda _: block, body, flags=re.S)
        else:
            raise SystemExit(f"{page}: put two lines {MARK} where the table goes")
        page.write_text(body)


if __name__ == "__main__":
    main()
