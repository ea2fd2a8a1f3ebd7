"""The issue's check: mamba, rwkv, hyena, canvas_read and canvas_write edges in one topology
compile, report their choices and train a few steps (plus an identity region's binder)."""

from __future__ import annotations

import pytest
import torch

from canvas_core.program import CanvasProgram, IdentitySpec, RegionProgram
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection

TYPES = ("mamba", "rwkv", "hyena", "canvas_read", "canvas_write")


def _program():
    # 4 x 4 grid, 2 frames: a glimpse row, two canvas rows, one row of object tokens
    regions = {
        "glimpse": (0, 2, 0, 1, 0, 4),
        "canvas": (0, 2, 1, 3, 0, 4),
        "objects": (0, 2, 3, 4, 0, 4),
    }
    layout = CanvasLayout(T=2, H=4, W=4, d_model=32, regions=regions)
    topo = CanvasTopology(connections=[
        Connection("glimpse", "canvas", fn="canvas_read"),    # glimpse tokens read the canvas
        Connection("canvas", "glimpse", fn="canvas_write"),   # the canvas reads the glimpse
        Connection("glimpse", "glimpse", fn="mamba"),
        Connection("objects", "canvas", fn="rwkv"),
        Connection("canvas", "canvas", fn="hyena"),
        Connection("objects", "objects", fn="self_attention"),
    ])
    progs = {
        "glimpse": RegionProgram(family="observation"),
        "canvas": RegionProgram(family="memory"),
        "objects": RegionProgram(family="state", identity=IdentitySpec(mode="tracklet", slot_capacity=3,
                                                                        birth_death=True)),
    }
    return CanvasProgram(schema=CanvasSchema(layout=layout, topology=topo), regions=progs)


def _step(layer, binders, opt, x, target, obj_idx, slot_target) -> float:
    y = layer(x)
    slots = binders["objects"](y.index_select(1, obj_idx)).slots
    loss = (y - target).pow(2).mean() + (slots - slot_target).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def test_mixed_state_space_and_canvas_topology_compiles_reports_and_trains():
    plugins = pytest.importorskip("canvas_core.plugins")
    missing = [t for t in TYPES if t not in plugins.list_attention_types()]
    if missing:
        pytest.skip(f"attention types not registered yet: {missing}")
    from canvas_core.compiler import ProgramCompiler
    from canvas_core.identity import build_identity_binders
    from canvas_core.runtime.canvas_attention import CanvasAttention

    program = _program()
    compiled = ProgramCompiler(program).compile(device="cpu", n_heads=4)
    report = compiled.report()
    for t in TYPES:
        assert t in report, (t, report)
    by_type = {r.requested: r for r in compiled.resolutions.values()}
    assert set(TYPES) <= set(by_type)
    for t in TYPES:
        assert by_type[t].implementation == t
    assert by_type["canvas_read"].provider == "canvas-plugin-canvit"
    # on CPU the CUDA kernels are rejected with their reasons, and the same math runs instead
    rejected_rwkv = dict(by_type["rwkv"].rejected)
    assert "fla_rwkv" in rejected_rwkv and any("cuda" in r for r in rejected_rwkv["fla_rwkv"])
    assert by_type["rwkv"].kernel != "fla_rwkv" and by_type["mamba"].kernel != "mamba_ssm"
    assert "fla_rwkv" in report and "mamba_ssm" in report

    torch.manual_seed(0)
    layout = program.schema.layout
    layer = CanvasAttention(program.schema.topology, layout, d_model=32, n_heads=4)
    assert {f for f in layer.plan.groups} >= set(TYPES)
    binders = build_identity_binders(program, d_model=32)
    assert list(binders.regions) == ["objects"]
    params = list(layer.parameters()) + list(binders.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    x = torch.randn(4, layout.num_positions, 32)
    target = torch.randn(4, layout.num_positions, 32)
    obj_idx = torch.as_tensor(layout.region_indices("objects"))
    slot_target = torch.randn(4, 3, 32)
    losses = []
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add contention
    try:
        for _ in range(5):
            losses.append(_step(layer, binders, opt, x, target, obj_idx, slot_target))
    finally:
        torch.set_num_threads(n_threads)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses
    # every type's module received gradients
    for f in TYPES:
        mod = layer.fn_modules[f]
        grads = [p.grad for p in mod.parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), f
