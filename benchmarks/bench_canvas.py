"""canvas-core vs canvas-engineering 0.5.0 vs a plain dense masked attention layer, one table.

For the dense, causal_temporal and hub-spoke topologies at several N (canvas: T=8 frames, a video
region plus small action/reward regions), measured in ONE run:

* mask build: ``attention_mask`` (ours) vs ``CanvasTopology.to_attention_mask`` (canvas-engineering);
* plan build: ``lower(topology, layout)``;
* forward and forward+backward time and peak memory of ``AttentionDispatcher`` (ours), the
  canvas-engineering ``AttentionDispatcher``, a plain layer (QKV + dense masked SDPA + output
  projection) with the same mask, and the same plain layer unmasked (for the density ratio);
* plan build for a CogVideoX-2B-sized canvas (T=13, 30 x 46: 17,940 positions).

Ratios are what to read; absolute times depend on the machine.  canvas-engineering runs that
are predicted (from the previous size, quadratic scaling) to take longer than ``--ce-budget``
seconds are skipped and printed as ``skipped (>Xs)``.

    python benchmarks/bench_canvas.py --quick
    python benchmarks/bench_canvas.py --sizes 256,1024,4096 --write docs/performance.md
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from canvas_core.compiler.lowering import lower
from canvas_core.runtime.plan_tensors import attention_mask
from canvas_core.runtime.dispatch import AttentionDispatcher
from canvas_core.schema import CanvasLayout

try:
    import canvas_engineering as ce
    from canvas_engineering.dispatch import AttentionDispatcher as CEDispatcher
except ImportError:  # pragma: no cover
    ce = None

TOPOLOGIES = ("dense", "causal_temporal", "hub_spoke")
REGIONS = ("video", "action", "reward")


# ---- workloads ---------------------------------------------------------------------------------
def canvas(n: int, T: int = 8):
    side = max(4, n // T)
    h = 2 ** max(1, int(math.log2(side) / 2))
    w = side // h
    return dict(T=T, H=h, W=w, d_model=64, regions={
        "video": (0, T, 0, h - 1, 0, w), "action": (0, T, h - 1, h, 0, w // 2),
        "reward": (0, T, h - 1, h, w // 2, w)})


def cogvideox_canvas():
    return dict(T=13, H=30, W=46, d_model=64, regions={
        "video": (0, 13, 0, 30, 0, 45), "action": (0, 13, 0, 1, 45, 46), "reward": (0, 13, 1, 2, 45, 46)})


def topology(mod, name):
    if name == "hub_spoke":
        return mod.CanvasTopology.hub_spoke("video", ["action", "reward"])
    return getattr(mod.CanvasTopology, name)(list(REGIONS))


class PlainLayer(nn.Module):
    """QKV + dense (masked) SDPA + output projection: the baseline transformer attention."""

    def __init__(self, d: int, heads: int, mask: Optional[torch.Tensor]):
        super().__init__()
        self.h = heads
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        if mask is not None:
            add = torch.where(mask > 0, mask.clamp_min(1e-30).log(), torch.full_like(mask, -math.inf))
            add[~(mask > 0).any(1)] = 0.0
            self.register_buffer("mask", add)
        else:
            self.mask = None

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.h, D // self.h).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        return self.out(o.transpose(1, 2).reshape(B, N, D))


# ---- measurement -------------------------------------------------------------------------------
def timed(fn: Callable, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def peak_bytes(fn: Callable, device: str) -> Optional[int]:
    """Extra peak memory of one call: CUDA allocator peak, or the process RSS high-water mark
    (reset through /proc/self/clear_refs) on Linux CPUs."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back so RSS reflects live memory
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    base = _status("VmRSS")
    fn()
    return _status("VmHWM") - base


def fmt_t(s):
    if s is None:
        return "-"
    if isinstance(s, str):
        return s
    return f"{s * 1e3:.1f}" if s < 10 else f"{s:.1f}s"


def fmt_m(b):
    return "-" if b is None else (b if isinstance(b, str) else f"{b / 2**20:.0f}")


def fmt_r(a, b):
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return "-"
    return f"{a / b:.3g}"


class Budget:
    """Predicts canvas-engineering's time at the next size (quadratic) and skips if too long."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.last: Dict[str, tuple] = {}

    max_n = None

    def run(self, key: str, n: int, fn: Callable[[], float]):
        if self.max_n is not None and n > self.max_n:
            return f"skipped (N>{self.max_n})"
        prev = self.last.get(key)
        if prev is not None:
            pn, pt = prev
            if pt * (n / pn) ** 2 > self.seconds:
                return f"skipped (>{self.seconds:.0f}s)"
        t = fn()
        self.last[key] = (n, t)
        return t


def bench_row(name: str, n: int, args, budget: Budget) -> Dict[str, object]:
    dev, B, heads = args.device, args.batch, args.heads
    kw = canvas(n)
    lay = CanvasLayout(**kw)
    top = topology(sys.modules[__name__].__dict__["_ours"], name)
    N = lay.num_positions
    reps = args.repeats if N <= 4096 else 1
    row: Dict[str, object] = {"topology": name, "N": N}
    t_mask = timed(lambda: attention_mask(top, lay), reps)
    mask = attention_mask(top, lay)
    row["density"] = float((mask > 0).float().mean())
    row["mask_ours"] = t_mask
    row["plan"] = timed(lambda: lower(top, lay), reps)
    if ce is not None:
        ce_lay = ce.CanvasLayout(**kw)
        ce_top = topology(ce, name)
        row["mask_ce"] = budget.run(f"mask-{name}", N, lambda: timed(lambda: ce_top.to_attention_mask(ce_lay), 1, 0))
    torch.manual_seed(0)
    x = torch.randn(B, N, 64, device=dev)
    layers = {
        "ours": AttentionDispatcher(top, lay, 64, heads).to(dev),
        "dense": PlainLayer(64, heads, mask).to(dev),
        "unmasked": PlainLayer(64, heads, None).to(dev),
    }
    if ce is not None:
        try:
            layers["ce"] = CEDispatcher(ce_top, ce_lay, 64, heads).to(dev)
        except Exception as exc:  # pragma: no cover
            row["ce_error"] = repr(exc)
    sync = (lambda: torch.cuda.synchronize()) if dev.startswith("cuda") else (lambda: None)
    for key, layer in layers.items():
        def fwd():
            with torch.no_grad():
                layer(x)
            sync()

        def fwdbwd():
            xi = x.detach().requires_grad_(True)
            layer(xi).float().square().mean().backward()
            sync()

        if key == "ce":
            row["fwd_ce"] = budget.run(f"fwd-{name}", N, lambda: timed(fwd, reps))
            row["fb_ce"] = budget.run(f"fb-{name}", N, lambda: timed(fwdbwd, reps))
            row["mem_ce"] = peak_bytes(fwdbwd, dev) if not isinstance(row["fb_ce"], str) else "skipped"
        else:
            row[f"fwd_{key}"] = timed(fwd, reps)
            if key != "unmasked":
                row[f"fb_{key}"] = timed(fwdbwd, reps)
                row[f"mem_{key}"] = peak_bytes(fwdbwd, dev)
        layer.zero_grad(set_to_none=True)
    del layers
    return row


def table(rows: List[Dict[str, object]]) -> str:
    head = ("| topology | N | density | mask ours ms | mask CE ms | CE/ours | plan ms "
            "| fwd ours ms | fwd CE ms | fwd dense ms | fwd unmasked ms | ours/CE | ours/dense | ours/(d x unmasked) "
            "| f+b ours ms | f+b CE ms | f+b dense ms | f+b ours/CE | f+b ours/dense "
            "| peak MiB ours | peak MiB CE | peak MiB dense |")
    sep = "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"
    out = [head, sep]
    for r in rows:
        d = r["density"]
        out.append("| " + " | ".join([
            r["topology"], str(r["N"]), f"{d:.3f}", fmt_t(r["mask_ours"]), fmt_t(r.get("mask_ce")),
            fmt_r(r.get("mask_ce"), r["mask_ours"]), fmt_t(r["plan"]),
            fmt_t(r["fwd_ours"]), fmt_t(r.get("fwd_ce")), fmt_t(r["fwd_dense"]), fmt_t(r["fwd_unmasked"]),
            fmt_r(r["fwd_ours"], r.get("fwd_ce")), fmt_r(r["fwd_ours"], r["fwd_dense"]),
            fmt_r(r["fwd_ours"], d * r["fwd_unmasked"]),
            fmt_t(r["fb_ours"]), fmt_t(r.get("fb_ce")), fmt_t(r["fb_dense"]),
            fmt_r(r["fb_ours"], r.get("fb_ce")), fmt_r(r["fb_ours"], r["fb_dense"]),
            fmt_m(r["mem_ours"]), fmt_m(r.get("mem_ce")), fmt_m(r["mem_dense"]),
        ]) + " |")
    return "\n".join(out)


def cog_table(args, budget: Budget) -> str:
    kw = cogvideox_canvas()
    lay = CanvasLayout(**kw)
    lines = ["| topology (CogVideoX-2B canvas) | N | plan ms | mask ours ms | mask CE ms |", "|---|---|---|---|---|"]
    for name in TOPOLOGIES:
        top = topology(sys.modules[__name__].__dict__["_ours"], name)
        t_plan = timed(lambda: lower(top, lay), args.repeats)
        t_mask = timed(lambda: attention_mask(top, lay), 1)
        t_ce = "-"
        if ce is not None:
            ce_lay, ce_top = ce.CanvasLayout(**kw), topology(ce, name)
            t_ce = budget.run(f"mask-{name}", lay.num_positions,
                              lambda: timed(lambda: ce_top.to_attention_mask(ce_lay), 1, 0))
        lines.append(f"| {name} | {lay.num_positions} | {fmt_t(t_plan)} | {fmt_t(t_mask)} | {fmt_t(t_ce)} |")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    try:
        import importlib.metadata as md

        ce_v = md.version("canvas-engineering")
    except Exception:  # pragma: no cover
        ce_v = "not installed"
    return (f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {dev}; canvas-engineering {ce_v}; Python {platform.python_version()}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="sizes 256,1024, 1 repeat")
    p.add_argument("--sizes", default="256,1024,4096,16384", help="comma-separated N")
    p.add_argument("--topologies", default=",".join(TOPOLOGIES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--ce-budget", type=float, default=60.0, help="skip canvas-engineering runs predicted longer (s)")
    p.add_argument("--ce-max-n", type=int, default=4096, help="skip canvas-engineering above this N")
    p.add_argument("--no-cog", action="store_true", help="skip the CogVideoX-sized plan table")
    p.add_argument("--write", default=None, help="also write the tables into this markdown file")
    args = p.parse_args(argv)
    sizes = [256, 1024] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    if args.quick:
        args.repeats = 1
    import canvas_core.schema as ours

    globals()["_ours"] = ours
    start = time.perf_counter()
    budget = Budget(args.ce_budget)
    budget.max_n = args.ce_max_n
    rows = []
    for n in sizes:
        for name in args.topologies.split(","):
            rows.append(bench_row(name, n, args, budget))
            print(f"  done {name} N={rows[-1]['N']} ({time.perf_counter() - start:.0f}s)", file=sys.stderr)
    main_table = table(rows)
    cog = "" if args.no_cog else cog_table(args, budget)
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    header = (f"Measured {when} on: {machine()}.\nDevice {args.device}, batch {args.batch}, d_model 64, "
              f"{args.heads} heads, median of {args.repeats} (1 at N > 4096), total {time.perf_counter() - start:.0f}s.")
    text = f"{header}\n\n{main_table}\n\n{cog}\n"
    print(text)
    if args.write:
        path = args.write
        marker = "<!-- bench_canvas table -->"
        doc = open(path).read() if os.path.exists(path) else ""
        if marker in doc:
            pre, _, rest = doc.partition(marker)
            _, _, post = rest.partition(marker)
            doc = f"{pre}{marker}\n{text}\n{marker}{post}"
        else:
            doc = f"{doc}\n{marker}\n{text}\n{marker}\n"
        with open(path, "w") as f:
            f.write(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
