"""Canvas topologies inside real backbones (tiny CogVideoX, Mochi and timm ViT), one table.

For each backbone at about 3k, 13k and 18k tokens (CogVideoX / Mochi: 3 or 13 latent frames of
32 x 32 or 30 x 46 patches plus 8 text tokens; ViT: one frame of patches plus the CLS token),
measured in ONE run, side by side:

* ``install_topology``: wall time (best of three) and extra peak memory (numpy / Python allocations traced by
  ``tracemalloc`` plus the bytes of the index buffers the installation keeps, or on CUDA the
  device memory high-water mark of the install);
* forward and forward+backward time of the grafted model with no topology, with a sparse
  topology (CogVideoX / Mochi: causal-temporal -- video reads its own and the previous frame,
  text reads everything, video reads the text; ViT: bands of 8 patch rows reading themselves and
  their two neighbours) and with a dense topology (must cost what no topology costs);
* the ratio topology / no topology, the density of the topology (linked pairs / tokens^2) and
  their quotient (1.0 = the cost follows the linked pairs exactly).

The models are tiny (one block, 2 heads of 16) so that attention dominates; absolute times
depend on the machine, the ratios are what to read.

    python benchmarks/bench_backbones.py --quick
    python benchmarks/bench_backbones.py --write docs/performance.md
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import sys
import time
import tracemalloc
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from _doc_table import write_between_markers  # benchmarks/, the script's own folder

SIZES = {  # name -> (frames, patch rows, patch cols) for the video models; ViT uses rows x cols
    "3k": (3, 32, 32),
    "13k": (13, 32, 32),
    "18k": (13, 30, 46),
}
VIT_GRID = {"3k": (56, 56), "13k": (114, 114), "18k": (134, 134)}
TEXT = 8
HEADS, HEAD_DIM = 2, 16


def _quiet() -> None:
    try:
        import diffusers

        diffusers.utils.logging.set_verbosity_error()
    except Exception:  # pragma: no cover - diffusers missing: those rows are skipped
        pass


def build(kind: str, size: str, device: str):
    """(model, forward kwargs) of a one-block tiny backbone at ``size``."""
    torch.manual_seed(0)
    if kind == "vit":
        import timm

        gh, gw = VIT_GRID[size]
        m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(gh * 8, gw * 8), patch_size=8,
                              depth=1, embed_dim=HEADS * HEAD_DIM, num_heads=HEADS, num_classes=4)
        return m.to(device).eval(), {"x": torch.randn(1, 3, gh * 8, gw * 8, device=device)}
    import diffusers

    f, h, w = SIZES[size]
    if kind == "cogvideox":
        m = diffusers.CogVideoXTransformer3DModel(
            num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=4, out_channels=4, time_embed_dim=8,
            text_embed_dim=16, num_layers=1, sample_width=w * 2, sample_height=h * 2, sample_frames=f,
            patch_size=2, max_text_seq_length=TEXT)
        kw = dict(hidden_states=torch.randn(1, f, 4, h * 2, w * 2), encoder_hidden_states=torch.randn(1, TEXT, 16),
                  timestep=torch.tensor([5]))
    else:
        m = diffusers.MochiTransformer3DModel(
            patch_size=2, num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, num_layers=1,
            pooled_projection_dim=16, in_channels=4, text_embed_dim=16, time_embed_dim=8, max_sequence_length=TEXT)
        kw = dict(hidden_states=torch.randn(1, 4, f, h * 2, w * 2), encoder_hidden_states=torch.randn(1, TEXT, 16),
                  timestep=torch.tensor([5]), encoder_attention_mask=torch.ones(1, TEXT))
    kw = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    return m.to(device).eval(), kw


def topologies(kind: str, tokens) -> Tuple[Any, Any, Any]:
    """(tokens on the layout the topologies use, sparse topology, dense topology)."""
    from canvas_core.schema import CanvasLayout, CanvasTopology, Connection

    lay = tokens.layout
    if kind == "vit":
        H, W = tuple(lay.spatial_shape)
        gh = lay.regions["patches"].bounds[3]
        bands = [(r, min(r + 8, gh)) for r in range(0, gh, 8)]
        regions = {f"b{i}": (0, 1, a, b, 0, W) for i, (a, b) in enumerate(bands)}
        regions["cls"] = lay.regions["cls"].bounds
        mine = CanvasLayout(T=1, spatial_shape=(H, W), d_model=lay.d_model, regions=regions)
        conns = [Connection(f"b{i}", f"b{j}") for i in range(len(bands)) for j in (i - 1, i, i + 1)
                 if 0 <= j < len(bands)]
        conns += [Connection("cls", r) for r in regions] + [Connection(r, "cls") for r in regions if r != "cls"]
        return tokens.with_layout(mine), CanvasTopology(connections=conns), CanvasTopology.dense(list(regions))
    conns = [Connection("video", "video", t_src=0, t_dst=0), Connection("video", "video", t_src=0, t_dst=-1),
             Connection("video", "text"), Connection("text", "video"), Connection("text", "text")]
    return tokens, CanvasTopology(connections=conns), CanvasTopology.dense(["video", "text"])


def density(inst) -> float:
    """Linked (query, key) pairs of the installed token plan / tokens^2 (softmax groups, union)."""
    from canvas_core.compiler.plan import segment_grid

    tp = inst.token_plan
    n = tp.n
    linked = 0.0
    for fn, g in tp.groups.items():
        if fn not in inst.softmax_types:
            continue
        sg = segment_grid(n, g.q0, g.q1, g.k0, g.k1, g.weight)
        area = np.outer(np.diff(sg.row_bounds), np.diff(sg.col_bounds))
        linked += float(area[sg.grid > 0].sum())
    return linked / float(n * n) if n else 0.0


def held_bytes(inst) -> int:
    return sum(b.numel() * b.element_size() for b in inst.runner.buffers())


def timed(fn, repeats: int, device: str) -> float:
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def run_one(kind: str, size: str, device: str, repeats: int) -> Dict[str, Any]:
    from canvas_core.looping import get_adapter, graft_looped_blocks

    m, kw = build(kind, size, device)
    graft_looped_blocks(m, max_loops=1, freeze="none", use_gradient_checkpointing=False)
    ad = get_adapter(m)
    tokens = ad.token_layout(m, kw if kind != "vit" else kw["x"])
    tokens, sparse, dense = topologies(kind, tokens)
    call = (lambda: m(kw["x"])) if kind == "vit" else (lambda: m(**kw).sample)

    def fwd():
        with torch.no_grad():
            call()

    def fwd_bwd():
        m.zero_grad(set_to_none=True)
        call().float().pow(2).mean().backward()

    fwd()  # warm up (allocator, lazy imports)
    fwd_bwd()
    row: Dict[str, Any] = {"backbone": kind, "tokens": tokens.seq_len}
    tops = {"none": None, "sparse": sparse, "dense": dense}
    for name, top in tops.items():
        if top is None:
            continue
        ad.install_topology(m, top, tokens)  # warm (plugin resolution caches)
        ad.remove_topology(m)
        # time: best of three installs, untraced (tracemalloc slows every allocation)
        best = float("inf")
        for _ in range(3):
            gc.collect()
            t = time.perf_counter()
            ad.install_topology(m, top, tokens)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
            ad.remove_topology(m)
        gc.collect()
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        tracemalloc.start()
        inst = ad.install_topology(m, top, tokens)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        # host allocations (numpy, Python) plus, on CPU, the index buffers kept; on CUDA the
        # device memory high-water mark of the install instead of the buffers
        extra = (torch.cuda.max_memory_allocated() - base) if cuda else held_bytes(inst)
        row[f"{name}_install_ms"] = best * 1e3
        row[f"{name}_install_mib"] = (peak + extra) / 2 ** 20
        row[f"{name}_density"] = density(inst)
        row[f"{name}_kernel"] = ", ".join(f"{v}" for v in inst.describe_kernels().values())
        fwd()  # first call on this installation (per-device runner)
        ad.remove_topology(m)
    # the three conditions interleaved, best of `repeats` each: a slow spell of a shared machine
    # hits all of them instead of one
    for name in tops:
        row[f"fwd_{name}"] = row[f"fb_{name}"] = float("inf")
    for _ in range(repeats):
        for name, top in tops.items():
            if top is None:
                ad.remove_topology(m)
            else:
                ad.install_topology(m, top, tokens)
            row[f"fwd_{name}"] = min(row[f"fwd_{name}"], timed(fwd, 1, device))
            row[f"fb_{name}"] = min(row[f"fb_{name}"], timed(fwd_bwd, 1, device))
    ad.remove_topology(m)
    gc.collect()
    return row


def table(rows: List[Dict[str, Any]]) -> str:
    head = ["backbone", "tokens", "topology", "kernel", "density", "install ms", "install MiB",
            "fwd ms (none / topo)", "fwd ratio", "fwd+bwd ms (none / topo)", "fwd+bwd ratio", "ratio / density"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        for name in ("sparse", "dense"):
            fr = r[f"fwd_{name}"] / r["fwd_none"]
            br = r[f"fb_{name}"] / r["fb_none"]
            d = r[f"{name}_density"]
            label = ("causal-temporal" if r["backbone"] != "vit" else "row bands") if name == "sparse" else "dense"
            lines.append("| " + " | ".join([
                r["backbone"], f"{r['tokens']:,}", label, r[f"{name}_kernel"], f"{d:.3f}",
                f"{r[f'{name}_install_ms']:.1f}", f"{r[f'{name}_install_mib']:.2f}",
                f"{r['fwd_none'] * 1e3:.0f} / {r[f'fwd_{name}'] * 1e3:.0f}", f"{fr:.2f}",
                f"{r['fb_none'] * 1e3:.0f} / {r[f'fb_{name}'] * 1e3:.0f}", f"{br:.2f}",
                f"{fr / d:.2f}" if d else "-"]) + " |")
    return "\n".join(lines)




def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the 3k size only, one repeat")
    p.add_argument("--sizes", default="3k,13k,18k", help=f"comma-separated, of {list(SIZES)}")
    p.add_argument("--backbones", default="cogvideox,mochi,vit")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--write", default=None, help="also write the table into this markdown file (between markers)")
    a = p.parse_args(argv)
    _quiet()
    sizes = ["3k"] if a.quick else [s.strip() for s in a.sizes.split(",") if s.strip()]
    repeats = 1 if a.quick else a.repeats
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        p.error(f"unknown sizes {bad}; choose from {list(SIZES)}")
    rows = []
    start = time.perf_counter()
    for kind in [b.strip() for b in a.backbones.split(",") if b.strip()]:
        for size in sizes:
            rows.append(run_one(kind, size, a.device, repeats))
            print(f"  done {kind} {size} ({time.perf_counter() - start:.0f}s)", file=sys.stderr)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpu = f"{os.cpu_count()} CPU threads" if a.device == "cpu" else torch.cuda.get_device_name(0)
    header = (f"Measured {when} on {a.device} ({cpu}, torch {torch.__version__}, {platform.python_version()}, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), best of {repeats}; "
              "one block, 2 heads of 16, batch 1.")
    text = header + "\n\n" + table(rows)
    print(text)
    if a.write:
        write_between_markers(a.write, "bench_backbones", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
