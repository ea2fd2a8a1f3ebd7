"""Seeds 002 (compiler), 003 (identity binding) and 004 (CanViT canvas attention), as documented."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from canvas_core import CanvasLayout, CanvasProgram, CanvasSchema, CanvasTopology, Connection, RegionProgram


def _program():
    layout = CanvasLayout(T=2, H=4, W=4, d_model=8, regions={
        "vision": (0, 2, 0, 2, 0, 4), "belief": (0, 2, 2, 3, 0, 4),
        "memory": (0, 2, 3, 4, 0, 2), "prior": (0, 2, 3, 4, 2, 4)})
    topo = CanvasTopology([Connection("vision", "vision"), Connection("belief", "vision"),
                           Connection("belief", "memory"), Connection("belief", "prior"),
                           Connection("memory", "belief")])
    return CanvasProgram(schema=CanvasSchema(layout, topo), regions={
        "vision": RegionProgram(family="observation", compile_mode="freeze"),
        "belief": RegionProgram(family="state"),
        "memory": RegionProgram(family="memory", compile_mode="export"),
        "prior": RegionProgram(family="state", compile_mode="constant")})


class RegionModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.regions = nn.ModuleDict({n: nn.Linear(8, 8) for n in ("vision", "belief", "memory", "prior")})


def test_seed002_compiler_walkthrough(tmp_path):
    from canvas_core import ProgramCompiler

    program = _program()
    compiled = ProgramCompiler(program).compile()  # usage line of the seed: modes recorded only
    assert compiled.frozen_regions == {"vision"}
    assert compiled.constant_regions == {"prior"} and compiled.exported_memories == {"memory"}
    assert compiled.active_regions == {"vision", "belief"}
    assert compiled.n_eliminated == 2
    assert all(c.src in compiled.active_regions and c.dst in compiled.active_regions
               for c in compiled.active_connections)
    assert set(compiled.schema.layout.regions) == {"vision", "belief"}

    model = RegionModel()
    prior_weight = model.regions["prior"].weight.detach().clone()
    memory_weight = model.regions["memory"].weight.detach().clone()
    compiled = ProgramCompiler(program).compile(module=model, export_dir=str(tmp_path))
    assert not any(p.requires_grad for p in model.regions["vision"].parameters())
    assert all(p.requires_grad for p in model.regions["belief"].parameters())
    # constant: parameters became buffers of the same values
    assert not list(model.regions["prior"].parameters())
    buffers = dict(model.regions["prior"].named_buffers())
    assert torch.equal(buffers["weight"], prior_weight)
    assert compiled.constant_buffers["prior"] is not None
    # export: safetensors on disk (never pickle), equal to the weights, and detached from training
    path = compiled.exported_paths["memory"]
    assert path.endswith(".safetensors")
    from safetensors.torch import load_file

    saved = load_file(path)
    assert torch.equal(saved["weight"], memory_weight)
    with open(path, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))
    assert "__metadata__" in header
    assert not any(p.requires_grad for p in model.regions["memory"].parameters())


def test_seed003_identity_binding():
    from canvas_core import IdentitySpec, SlotBindingModule
    from canvas_core.identity import SlotBindingModule as SlotBindingModule2

    assert SlotBindingModule is SlotBindingModule2
    spec = IdentitySpec()
    assert (spec.mode, spec.slot_capacity, spec.binding_fn, spec.birth_death) == (
        "persistent", 64, "cross_attention", False)
    from canvas_core.identity import IdentitySpec as IdentitySpec2

    assert IdentitySpec2 is IdentitySpec
    assert IdentitySpec(mode="tracklet", slot_capacity=8, birth_death=True).slot_capacity == 8
    binder = SlotBindingModule(d_model=32, n_slots=6, n_heads=4, birth_death=False)
    obs = torch.randn(3, 10, 32)
    assert binder(obs).shape == (3, 6, 32)
    # without birth/death every slot is alive
    assert binder.alive_mask(obs).shape == (3, 6) and binder.alive_mask(obs).all()
    # slots read the observations: different observations give different slots
    assert not torch.allclose(binder(obs), binder(torch.randn(3, 10, 32)))
    gated = SlotBindingModule(32, 6, n_heads=4, birth_death=True)
    alive = gated.alive_mask(obs)
    assert alive.shape == (3, 6) and alive.dtype == torch.bool
    out = gated(obs)
    assert out.shape == (3, 6, 32)
    assert torch.all(out[~alive] == 0)  # dead slots are zeroed
    assert all(out[b, k].abs().sum() > 0 for b, k in alive.nonzero().tolist())  # live ones are not


def test_seed004_canvit_recurrent_glimpses():
    canvit = pytest.importorskip("canvas_plugin_canvit")
    model = canvit.CanViTCore(d_model=32, canvas_dim=48, n_heads=4, depth=1, patch_size=8).eval()
    image = torch.rand(1, 3, 64, 64)
    state = model.init_state(batch_size=1, canvas_grid_size=8)
    with torch.inference_mode():
        vp = canvit.Viewpoint.full_scene(batch_size=1, device=image.device)
        glimpse = canvit.sample_at_viewpoint(spatial=image, viewpoint=vp, glimpse_size_px=16)
        out = model(glimpse=glimpse, state=state, viewpoint=vp)
        assert out.state.canvas.shape == (1, 64, 48)
        canvas_spatial = model.get_spatial(out.state.canvas).unflatten(1, (8, 8))  # (1, 8, 8, 48)
        assert canvas_spatial.shape == (1, 8, 8, 48)
        # token-wise LayerNorm, as the seed says the canvas is decoded
        torch.testing.assert_close(canvas_spatial.mean(-1), torch.zeros(1, 8, 8), atol=1e-5, rtol=0)
        assert out.state.recurrent_cls.shape == (1, 1, 32)  # global CLS token
        assert out.local_patches.shape == (1, 4, 32)  # glimpse patch features (16 px / 8 px patches)^2
        vp2 = canvit.Viewpoint(centers=torch.tensor([[-.5, -.5]]), scales=torch.tensor([.5]))
        glimpse2 = canvit.sample_at_viewpoint(spatial=image, viewpoint=vp2, glimpse_size_px=16)
        out2 = model(glimpse=glimpse2, state=out.state, viewpoint=vp2)
    assert out2.state.canvas.shape == out.state.canvas.shape  # constant-size recurrent state
    assert not torch.equal(out2.state.canvas, out.state.canvas)


def test_seed004_canvas_types_in_a_topology():
    pytest.importorskip("canvas_plugin_canvit")
    from canvas_core import CanvasAttention

    layout = CanvasLayout(T=1, H=6, W=4, d_model=16, regions={"glimpse": (0, 1, 0, 2, 0, 4),
                                                              "canvas": (0, 1, 2, 6, 0, 4)})
    topo = CanvasTopology([Connection("glimpse", "glimpse"), Connection("glimpse", "canvas", fn="canvas_read"),
                           Connection("canvas", "glimpse", fn="canvas_write")])
    layer = CanvasAttention(topo, layout, d_model=16, n_heads=4)
    x = torch.randn(2, 24, 16, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.sum().backward()
    assert x.grad is not None


def test_seed004_canvas_attention_types_registered():
    pytest.importorskip("canvas_plugin_canvit")
    import canvas_core

    assert {"canvas_read", "canvas_write"} <= set(canvas_core.ATTENTION_TYPES)
    for name in ("canvas_read", "canvas_write"):
        attn = canvas_core.create_attention(name, d_model=16, n_heads=4)
        q, kv = torch.randn(2, 5, 16), torch.randn(2, 9, 16)
        out = attn(q, kv, kv)
        assert out.shape == (2, 5, 16) and torch.isfinite(out).all()
