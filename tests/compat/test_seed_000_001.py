"""Seeds 000 and 001: every snippet about canvases, topologies, types and schedules, run with
``canvas_core`` in place of ``canvas_engineering``. (Seed 000's graft quick start runs in
test_seed_000_quickstart.py, its program snippet in test_seed_000_program.py.)"""

from __future__ import annotations

import itertools

import pytest
import torch

import canvas_core


def test_seed000_define_canvas_layout_and_topology():
    from canvas_core import CanvasLayout, CanvasTopology, Connection, RegionSpec, SpatiotemporalCanvas

    layout = CanvasLayout(
        T=5, H=8, W=8, d_model=256,
        regions={
            "visual": (0, 5, 0, 6, 0, 6),  # 180 positions — video patches
            "action": RegionSpec(bounds=(0, 5, 6, 7, 0, 1), loss_weight=2.0),
            "reward": RegionSpec(bounds=(2, 3, 7, 8, 0, 1), period=5),
        },
        t_current=2,
    )
    canvas = SpatiotemporalCanvas(layout)
    batch = canvas.create_empty(batch_size=4)
    assert batch.shape == (4, 320, 256)
    visual_embs = torch.randn(4, 180, 256)
    batch = canvas.place(batch, visual_embs, "visual")
    actions = canvas.extract(batch, "action")
    assert actions.shape == (4, 5, 256)

    topology = CanvasTopology(connections=[
        Connection(src="visual", dst="visual"),
        Connection(src="action", dst="visual"),
        Connection(src="action", dst="action"),
        Connection(src="reward", dst="visual", fn="pooling"),
        Connection(src="reward", dst="action", fn="gated"),
    ])
    mask = topology.to_attention_mask(layout)
    assert mask.shape == (320, 320) and mask.dtype.is_floating_point
    vis, act, rew = (layout.region_indices(n) for n in ("visual", "action", "reward"))
    # brute force: mask[i, j] = 1 exactly where a connection links i's region to j's region
    pairs = {(s, d) for s, d in [("visual", "visual"), ("action", "visual"), ("action", "action"),
                                 ("reward", "visual"), ("reward", "action")]}
    owner = {}
    for name, idx in (("visual", vis), ("action", act), ("reward", rew)):
        for i in idx:
            owner[i] = name
    expected = torch.zeros(320, 320)
    for i, j in itertools.product(owner, owner):
        if (owner[i], owner[j]) in pairs:
            expected[i, j] = 1.0
    assert torch.equal(mask, expected)


def test_seed001_temporal_previous_frame_semantics():
    from canvas_core import CanvasLayout, CanvasTopology, Connection

    layout = CanvasLayout(T=4, H=2, W=2, d_model=8, regions={"obs": (0, 4, 0, 1, 0, 2), "action": (0, 4, 1, 2, 0, 2)})
    mask = CanvasTopology([Connection(src="action", dst="obs", t_src=0, t_dst=-1)]).to_attention_mask(layout)
    for t in range(4):
        for i in layout.region_indices_at_t("action", t):
            linked = {j for j in range(layout.num_positions) if mask[i, j] > 0}
            # frame t queries obs at t-1; at t=0 there is no earlier frame (hold finds none)
            assert linked == (set(layout.region_indices_at_t("obs", t - 1)) if t else set())
    same = CanvasTopology([Connection(src="action", dst="obs", t_src=0, t_dst=0)]).to_attention_mask(layout)
    for t in range(4):
        for i in layout.region_indices_at_t("action", t):
            assert {j for j in range(16) if same[i, j] > 0} == set(layout.region_indices_at_t("obs", t))


def test_seed001_computer_use_canvas():
    from canvas_core import CanvasLayout

    layout = CanvasLayout(T=16, H=32, W=32, d_model=768, regions={
        "screen": (0, 16, 0, 24, 0, 24), "mouse": (0, 16, 24, 26, 0, 4),
        "keyboard": (0, 16, 26, 28, 0, 4), "llm": (0, 16, 28, 32, 0, 8)})
    assert layout.num_positions == 16384
    assert [layout.region_numel(n) for n in ("screen", "mouse", "keyboard", "llm")] == [9216, 128, 128, 512]


LINEUP = {
    "cross_attention": ("Dot-product", "O(NM)"), "linear_attention": ("Dot-product", "O(N+M)"),
    "cosine_attention": ("Dot-product", "O(NM)"), "sigmoid_attention": ("Dot-product", "O(NM)"),
    "gated": ("Gating", "O(NM)"), "perceiver": ("Compression", "O(NK)"), "pooling": ("Compression", "O(N+M)"),
    "copy": ("Transfer", "O(N)"), "mamba": ("State-space", "O(N)"), "rwkv": ("State-space", "O(N)"),
    "hyena": ("Convolution", "O(N log N)"), "sparse_attention": ("Sparse", "O(NK)"),
    "local_attention": ("Sparse", "O(NW)"), "none": ("Meta", "O(0)"), "random_fixed": ("Meta", "O(NK)"),
    "mixture": ("Meta", "O(NK)"),
}


def test_seed001_attention_types_lineup():
    from canvas_core import ATTENTION_TYPES

    for name, (family, complexity) in LINEUP.items():
        assert name in ATTENTION_TYPES, name
        info = ATTENTION_TYPES[name]
        assert isinstance(info, str) and info  # a description, as in canvas-engineering
        assert info.family == family and info.complexity == complexity, name


@pytest.mark.parametrize("name", sorted(LINEUP))
def test_seed001_every_declared_type_builds_and_runs(name):
    module = canvas_core.create_attention(name, d_model=32, n_heads=4)
    q, kv = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    out = module(q, kv, kv)
    assert out.shape == (2, 5, 32) and torch.isfinite(out).all()


def test_seed001_sharpening_schedule():
    from canvas_core import SharpeningSchedule

    schedule = SharpeningSchedule(max_loops=3, beta_min=1.0, beta_max=4.0)
    assert [schedule(i) for i in range(3)] == pytest.approx([1.0, 2.5, 4.0])
    assert SharpeningSchedule(max_loops=4, beta_min=1.0, beta_max=4.0)(loop_idx=2) == pytest.approx(3.0)


def test_seed001_curriculum_ramps_one_to_three():
    from canvas_core import CurriculumScheduler

    scheduler = CurriculumScheduler(max_loops=3, total_steps=5000)
    loops = [scheduler.get_loops(s) for s in range(0, 5000, 50)]
    assert loops[0] == 1 and loops[-1] == 3 and loops == sorted(loops)


def test_seed001_api_reference_names_importable():
    for name in ["CanvasLayout", "RegionSpec", "SpatiotemporalCanvas", "Connection", "CanvasTopology",
                 "ATTENTION_TYPES", "transfer_distance", "CanvasSchema", "ActionHead", "LoopedBlockWrapper",
                 "graft_looped_blocks", "freeze_full", "freeze_half", "CurriculumScheduler",
                 "SharpeningSchedule", "save_loop_checkpoint"]:
        assert getattr(canvas_core, name) is not None


def test_every_public_name_resolves_and_covers_canvas_engineering():
    for name in canvas_core.__all__:
        assert getattr(canvas_core, name) is not None, name
    ce = pytest.importorskip("canvas_engineering")
    missing = [n for n in ce.__all__ if not hasattr(canvas_core, n)]
    assert not missing, f"canvas-engineering names missing from canvas_core: {missing}"


CE_MODULES = ["action_heads", "attention", "canvas", "checkpoint", "clock_ir", "cogvideox", "compiler",
              "connectivity", "cortex", "curriculum", "dispatch", "graft", "identity", "learning", "looped_block",
              "masks", "program", "residuals", "scheduling", "schema", "semantic", "sharpening", "types"]
# canvas-core modules that are thin compatibility paths (tests/compat owns them)
COMPAT_MODULES = {"action_heads", "canvas", "checkpoint", "clock_ir", "cogvideox", "connectivity", "cortex",
                  "curriculum", "dispatch", "graft", "learning", "looped_block", "masks", "residuals",
                  "scheduling", "sharpening", "types"}


def _ce_public(ce_mod, defined_here: bool):
    """Public names of a canvas_engineering module: those it defines (classes, functions, constants)
    or, with ``defined_here=False``, also the canvas_engineering names it imported."""
    import types

    out = []
    for n, o in vars(ce_mod).items():
        if n.startswith("_") or isinstance(o, types.ModuleType):
            continue
        mod = getattr(o, "__module__", None)
        if mod is None:  # constants (dicts, tuples, strings, numbers) defined in the module
            if isinstance(o, (dict, list, tuple, set, frozenset, str, int, float)):
                out.append(n)
        elif mod == ce_mod.__name__ or (not defined_here and mod.startswith("canvas_engineering")):
            out.append(n)
    return out


@pytest.mark.parametrize("module", CE_MODULES)
def test_canvas_engineering_module_paths(module):
    """``from canvas_engineering.<m> import X`` becomes ``from canvas_core.<m> import X``."""
    import importlib

    ce_mod = pytest.importorskip(f"canvas_engineering.{module}")
    ours = importlib.import_module(f"canvas_core.{module}")
    missing = [n for n in _ce_public(ce_mod, defined_here=True) if not hasattr(ours, n)]
    assert not missing, f"canvas_core.{module} lacks {missing}"


@pytest.mark.parametrize("module", sorted(COMPAT_MODULES))
def test_compat_modules_also_carry_reimported_names(module):
    """canvas-engineering modules imported shared names (``from canvas_engineering.graft import
    LoopedBlockWrapper`` worked); the compatibility paths keep those imports working too."""
    import importlib

    ce_mod = pytest.importorskip(f"canvas_engineering.{module}")
    ours = importlib.import_module(f"canvas_core.{module}")
    missing = [n for n in _ce_public(ce_mod, defined_here=False) if not hasattr(ours, n)]
    assert not missing, f"canvas_core.{module} lacks {missing}"
    assert (ours.__doc__ or "").startswith("canvas-engineering-compatible path")


@pytest.mark.parametrize("module", sorted(COMPAT_MODULES))
def test_compat_modules_import_without_torch(module):
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", f"import sys, canvas_core.{module} as m; dir(m); "
                    "assert 'torch' not in sys.modules, 'torch imported'"], check=True)


def test_torch_free_import():
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c",
                    "import canvas_core, sys; canvas_core.CanvasSchema; assert 'torch' not in sys.modules"],
                   check=True)
