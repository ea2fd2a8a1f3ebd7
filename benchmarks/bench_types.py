"""What each attention type costs on one canvas layer (and in one grafted backbone), one table.

The layer of issue 23: T = 8 frames of H x W (16 x 32 = 4,096 positions, or 32 x 64 = 16,384),
a ``video`` region (all rows but the last two) and a 2-row region ``a``; same-frame self links
``video <- video`` and ``a <- a`` (cross_attention) and one same-frame link ``a <- video`` of the
type under test.  Measured side by side in ONE run, conditions interleaved (best of
``--repeats`` each, so a slow spell of a shared machine hits every condition):

* forward and forward+backward of ``AttentionDispatcher`` (canvas-core) per type, and the ratio
  of its forward+backward to the same layer with a ``cross_attention`` link;
* canvas-engineering's ``AttentionDispatcher`` on the same layer and type (from PyPI), and the
  ratio canvas-core / canvas-engineering;
* the same layer without the ``a <- video`` link: a layer's time minus this one is what its
  link itself costs (the "link" column; a difference of two close timings, so noisier than
  the layer ratio);
* a plain dense layer (QKV, SDPA with the layer's boolean mask, output projection): the cost of
  ignoring the topology's sparsity (one row, the same for every type);
* the type's module alone (``create_attention(type, 64, 4)``, its own projections) on the link's
  key sets as the runtime calls it (queries ``(frames, a positions, 64)``, keys = values
  ``(frames, video positions, 64)``), forward+backward, and its ratio to the ``cross_attention``
  module on the same inputs: what a connection of the type costs against a softmax connection
  that brings its own projections (in the layer a softmax link reuses the layer's shared
  query/key/value projections, so the layer ratio charges the other types for theirs);
* one grafted backbone: a one-block tiny CogVideoX (2 heads of 16) on the same frames plus 8
  text tokens, the topology installed with ``install_topology`` (regions ``video``, ``a``,
  ``text``; the same links plus ``text <- text``), forward+backward and the ratio to
  cross_attention.

``--compile`` measures every layer (ours, canvas-engineering's, the dense one) compiled with
``torch.compile`` (inductor; the compile happens in the warm-up, untimed) and leaves out the
backbone column; ``--write`` then fills its own table (markers ``bench_types_compiled``).

Ratios are what to read; absolute times depend on the machine.  ``--cpu-time`` times with the
process CPU clock instead of the wall clock (steadier on a machine shared with other jobs; use it
with ``--threads 1``).

    python benchmarks/bench_types.py --quick
    python benchmarks/bench_types.py --write docs/performance.md
    python benchmarks/bench_types.py --compile --sizes 4k --write docs/performance.md
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from _doc_table import write_between_markers  # benchmarks/, the script's own folder

try:
    import canvas_engineering as ce
    from canvas_engineering.dispatch import AttentionDispatcher as CEDispatcher
except ImportError:  # pragma: no cover - the comparison columns are left empty
    ce = None

# frames, rows, cols; 64k (opt-in: seconds per call) shows where linear-time types overtake softmax
SIZES = {"4k": (8, 16, 32), "16k": (8, 32, 64), "64k": (8, 64, 128)}
TYPES = ("cross_attention", "cosine_attention", "sigmoid_attention", "sparse_attention",
         "local_attention", "gated", "perceiver", "pooling", "mixture",
         "linear_attention", "rwkv", "hyena", "mamba")
LINEAR = ("linear_attention", "rwkv", "hyena", "mamba")
NO_LINK = "(no a <- video link)"


def layer_spec(mod, size: str, fn: Optional[str]):
    """(layout, topology) of the issue's layer in the schema module ``mod`` (ours or CE's); with
    ``fn=None`` the same layer without the ``a <- video`` link (what the link itself costs)."""
    T, H, W = SIZES[size]
    lay = mod.CanvasLayout(T=T, H=H, W=W, d_model=64, regions={
        "video": (0, T, 0, H - 2, 0, W), "a": (0, T, H - 2, H, 0, W)})
    C = mod.Connection
    links = [C("video", "video", t_src=0, t_dst=0), C("a", "a", t_src=0, t_dst=0)]
    if fn is not None:
        links.append(C("a", "video", t_src=0, t_dst=0, fn=fn))
    return lay, mod.CanvasTopology(connections=links)


class DenseLayer(nn.Module):
    """QKV + SDPA with a boolean (N, N) mask + output projection (rows with no key: unmasked)."""

    def __init__(self, d: int, heads: int, allowed: torch.Tensor):
        super().__init__()
        self.h = heads
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        allowed = allowed.clone()
        allowed[~allowed.any(1)] = True
        self.register_buffer("mask", allowed)

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.h, D // self.h).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        return self.out(o.transpose(1, 2).reshape(B, N, D))


class Clock:
    def __init__(self, cpu: bool, device: str = "cpu"):
        self.now = time.process_time if cpu and device == "cpu" else time.perf_counter
        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def once(self, fn: Callable[[], Any]) -> float:
        self.sync()
        t = self.now()
        fn()
        self.sync()
        return self.now() - t


def runners(layer: nn.Module, x: torch.Tensor):
    def fwd():
        with torch.no_grad():
            layer(x)

    def fb():
        layer.zero_grad(set_to_none=True)
        xi = x.detach().requires_grad_(True)
        layer(xi).float().square().mean().backward()

    return fwd, fb


def module_alone(size: str, fn: str, device: str = "cpu"):
    """(fwd, fb) of the type's module alone on the ``a <- video`` key sets: ``(frames, a, 64)``
    queries reading ``(frames, video, 64)`` keys that are the values (as the runtime calls it)."""
    from canvas_core.plugins import create_attention

    f, h, w = SIZES[size]
    torch.manual_seed(0)
    mod = create_attention(fn, 64, 4).to(device)
    q0 = torch.randn(f, 2 * w, 64, device=device)
    k0 = torch.randn(f, (h - 2) * w, 64, device=device)

    def fwd():
        with torch.no_grad():
            mod(q0, k0, k0)

    def fb():
        mod.zero_grad(set_to_none=True)
        q, k = q0.detach().requires_grad_(True), k0.detach().requires_grad_(True)
        mod(q, k, k).float().square().mean().backward()

    return fwd, fb


def backbone(size: str, fn: Optional[str], device: str = "cpu"):
    """(fwd, fb) of a one-block tiny CogVideoX with the layer's topology installed (``fn=None``:
    without the ``a <- video`` link), or None."""
    try:
        import diffusers
    except ImportError:  # pragma: no cover
        return None
    from canvas_core.looping import get_adapter, graft_looped_blocks
    from canvas_core.schema import CanvasLayout, CanvasTopology, Connection

    diffusers.utils.logging.set_verbosity_error()
    f, h, w = SIZES[size]
    torch.manual_seed(0)
    m = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=16, num_layers=1, sample_width=w * 2, sample_height=h * 2, sample_frames=f,
        patch_size=2, max_text_seq_length=8).eval().to(device)
    kw = dict(hidden_states=torch.randn(1, f, 4, h * 2, w * 2), encoder_hidden_states=torch.randn(1, 8, 16),
              timestep=torch.tensor([5]))
    kw = {k: v.to(device) for k, v in kw.items()}
    graft_looped_blocks(m, max_loops=1, freeze="none", use_gradient_checkpointing=False)
    ad = get_adapter(m)
    tokens = ad.token_layout(m, kw)
    lay = tokens.layout
    regions = {"video": (0, f, 0, h - 2, 0, w), "a": (0, f, h - 2, h, 0, w), "text": lay.regions["text"].bounds}
    mine = CanvasLayout(T=lay.T, spatial_shape=tuple(lay.spatial_shape), d_model=lay.d_model, regions=regions)
    links = [Connection("video", "video", t_src=0, t_dst=0), Connection("a", "a", t_src=0, t_dst=0),
             Connection("text", "text")]
    if fn is not None:
        links.insert(2, Connection("a", "video", t_src=0, t_dst=0, fn=fn))
    top = CanvasTopology(connections=links)
    ad.install_topology(m, top, tokens.with_layout(mine))

    def fwd():
        with torch.no_grad():
            m(**kw)

    def fb():
        m.zero_grad(set_to_none=True)
        m(**kw).sample.float().square().mean().backward()

    return fwd, fb


def bench_size(size: str, types: List[str], a, clock: Clock) -> List[Dict[str, Any]]:
    import canvas_core.schema as ours
    from canvas_core.runtime.dispatch import AttentionDispatcher
    from canvas_core.runtime.plan_tensors import attention_mask

    T, H, W = SIZES[size]
    N = T * H * W
    torch.manual_seed(0)
    dev = a.device
    x = torch.randn(1, N, 64, device=dev)
    conds: Dict[str, Callable] = {}

    def made(layer: nn.Module) -> nn.Module:
        return torch.compile(layer) if a.compile else layer

    for fn in [*types, None]:  # None: the layer without the link, whose cost it prices
        lay, top = layer_spec(ours, size, fn)
        torch.manual_seed(0)
        conds[f"ours:{fn}"] = runners(made(AttentionDispatcher(top, lay, 64, 4).to(dev)), x)
        if fn is not None and ce is not None and not (a.ce_max_n and N > a.ce_max_n):
            try:
                clay, ctop = layer_spec(ce, size, fn)
                conds[f"ce:{fn}"] = runners(made(CEDispatcher(ctop, clay, 64, 4).to(dev)), x)
            except Exception as exc:  # a type canvas-engineering lacks
                print(f"  canvas-engineering {fn}: {type(exc).__name__}: {exc}", file=sys.stderr)
        if fn is not None and a.modules:
            conds[f"mod:{fn}"] = module_alone(size, fn, dev)
        if a.backbone:
            try:
                got = backbone(size, fn, dev)
            except Exception as exc:
                print(f"  backbone {fn}: {type(exc).__name__}: {exc}", file=sys.stderr)
                got = None
            if got is not None:
                conds[f"bb:{fn}"] = got
    if N <= a.dense_max_n:
        lay, top = layer_spec(ours, size, "cross_attention")
        conds["dense:"] = runners(made(DenseLayer(64, 4, attention_mask(top, lay) > 0).to(dev)), x)
    best: Dict[str, List[float]] = {}
    for key, (fwd, fb) in list(conds.items()):  # warm-up (allocator, lazy imports, plan caches, compiles)
        try:
            fwd()
            fb()
        except Exception as exc:  # e.g. a layer the compiler cannot take: its cells stay empty
            print(f"  {key}: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
            del conds[key]
    for _ in range(a.repeats):
        for key, (fwd, fb) in conds.items():
            f, b = best.setdefault(key, [float("inf"), float("inf")])
            best[key] = [min(f, clock.once(fwd)), min(b, clock.once(fb))]
        gc.collect()
    rows = []
    for fn in [*types, None]:
        row = {"type": NO_LINK if fn is None else fn, "N": N}
        for side in ("ours", "ce", "bb", "mod"):
            if f"{side}:{fn}" in best:
                row[f"fwd_{side}"], row[f"fb_{side}"] = best[f"{side}:{fn}"]
        rows.append(row)
    if "dense:" in best:
        f, b = best["dense:"]
        rows.append({"type": "(dense masked SDPA)", "N": N, "fwd_ours": f, "fb_ours": b})
    return rows


def _ms(v: Optional[float]) -> str:
    return "-" if v is None else (f"{v * 1e3:.1f}" if v < 10 else f"{v:.1f}s")


def _r(a: Optional[float], b: Optional[float]) -> str:
    return "-" if a is None or b is None or not b else f"{a / b:.2f}"


def _link(r: Dict[str, Any], bare: Dict[str, Any]) -> str:
    """The link's own forward+backward in ms: its layer minus the layer without it (a difference
    of two close timings: at 4,096 positions a near-free link can come out below 0)."""
    if r.get("type") in (NO_LINK, "(dense masked SDPA)") or None in (r.get("fb_ours"), bare.get("fb_ours")):
        return "-"
    return f"{(r['fb_ours'] - bare['fb_ours']) * 1e3:.1f}"


def table(rows: List[Dict[str, Any]]) -> str:
    head = ("| N | type | fwd ms | f+b ms | f+b / cross | link f+b ms | CE fwd ms | CE f+b ms "
            "| f+b ours / CE | backbone f+b ms | backbone f+b / cross | module f+b ms | module f+b / cross |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for N in sorted({r["N"] for r in rows}):
        rs = [r for r in rows if r["N"] == N]
        cross = next((r for r in rs if r["type"] == "cross_attention"), {})
        bare = next((r for r in rs if r["type"] == NO_LINK), {})
        for r in rs:
            name = f"**{r['type']}**" if r["type"] in LINEAR else r["type"]
            out.append("| " + " | ".join([
                f"{N:,}", name, _ms(r.get("fwd_ours")), _ms(r.get("fb_ours")),
                _r(r.get("fb_ours"), cross.get("fb_ours")), _link(r, bare),
                _ms(r.get("fwd_ce")), _ms(r.get("fb_ce")), _r(r.get("fb_ours"), r.get("fb_ce")),
                _ms(r.get("fb_bb")), _r(r.get("fb_bb"), cross.get("fb_bb")),
                _ms(r.get("fb_mod")), _r(r.get("fb_mod"), cross.get("fb_mod")),
            ]) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4k only, a few types, one repeat")
    p.add_argument("--sizes", default="4k,16k", help=f"comma-separated, of {list(SIZES)} (default 4k,16k)")
    p.add_argument("--types", default=",".join(TYPES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cpu-time", action="store_true", help="time with the process CPU clock")
    p.add_argument("--no-backbone", dest="backbone", action="store_false")
    p.add_argument("--no-modules", dest="modules", action="store_false",
                   help="leave out the module-alone columns")
    p.add_argument("--ce-max-n", type=int, default=4096, help="skip canvas-engineering above this N")
    p.add_argument("--dense-max-n", type=int, default=4096, help="skip the dense layer above this N")
    p.add_argument("--compile", action="store_true", help="every layer through torch.compile (no backbone column)")
    p.add_argument("--write", default=None, help="also write the table into this markdown file")
    a = p.parse_args(argv)
    if a.compile:
        a.backbone = False
    if a.threads:
        torch.set_num_threads(a.threads)
    sizes = ["4k"] if a.quick else [s for s in a.sizes.split(",") if s]
    types = [t for t in a.types.split(",") if t]
    if a.quick:
        types, a.repeats = [t for t in types if t in ("cross_attention", "pooling") + LINEAR], 1
    if "cross_attention" not in types:
        types.insert(0, "cross_attention")
    clock = Clock(a.cpu_time, a.device)
    start = time.perf_counter()
    rows = []
    for size in sizes:
        rows += bench_size(size, types, a, clock)
        print(f"  done {size} ({time.perf_counter() - start:.0f}s)", file=sys.stderr)
    try:
        import importlib.metadata as md

        ce_v = md.version("canvas-engineering")
    except Exception:  # pragma: no cover
        ce_v = "not installed"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    where = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else f"{os.cpu_count()} CPU threads"
    cpu_clock = a.cpu_time and a.device == "cpu"
    header = (f"Measured {when} on {a.device} ({where}, torch {torch.__version__} with "
              f"{torch.get_num_threads()} threads, Python {platform.python_version()}, canvas-engineering "
              f"{ce_v}); {'process CPU' if cpu_clock else 'wall'} time, best of {a.repeats}; d_model 64, "
              "4 heads, batch 1; " + ("every layer compiled with torch.compile (inductor, compile untimed)."
                                     if a.compile else
                                     "backbone: one-block tiny CogVideoX, 2 heads of 16, plus 8 text tokens."))
    text = header + "\n\n" + table(rows)
    print(text)
    if a.write:
        write_between_markers(a.write, "bench_types_compiled" if a.compile else "bench_types", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
