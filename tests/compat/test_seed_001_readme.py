"""Seed 001 (the canvas-engineering README): every python block, with ``canvas_core`` in place of
``canvas_engineering``. Expected values come from the README text or from brute-force reference
implementations written here, never from the code under test."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

import canvas_core


# --------------------------------------------------------------------------- how the canvas works
def test_robot_canvas_place_extract_roundtrip():
    from canvas_core import CanvasLayout, SpatiotemporalCanvas

    layout = CanvasLayout(
        T=5, H=8, W=8, d_model=256,
        regions={
            "visual": (0, 5, 0, 6, 0, 6),  # 180 positions — video patches
            "action": (0, 5, 6, 7, 0, 1),  # 5 positions — per-frame actions
            "reward": (2, 3, 7, 8, 0, 1),  # 1 position — scalar reward
        },
        t_current=2,  # t >= 2 is future (diffusion output)
    )
    assert [layout.region_numel(n) for n in ("visual", "action", "reward")] == [180, 5, 1]
    canvas = SpatiotemporalCanvas(layout)
    batch = canvas.create_empty(batch_size=4)  # (4, 320, 256)
    assert batch.shape == (4, 320, 256)
    visual_embs = torch.randn(4, 180, 256)
    empty = batch
    batch = canvas.place(batch, visual_embs, "visual")
    # placement writes exactly the canonical flat indices t*64 + h*8 + w of the region (adding
    # embedding-independent modality/period terms) and leaves every other position alone
    want = [t * 64 + h * 8 + w for t in range(5) for h in range(6) for w in range(6)]
    assert list(layout.region_indices("visual")) == want
    rest = sorted(set(range(320)) - set(want))
    assert torch.equal(batch[:, rest], empty[:, rest])
    other = torch.randn(4, 180, 256)
    batch2 = canvas.place(empty, other, "visual")
    with torch.no_grad():
        torch.testing.assert_close(batch[:, want] - batch2[:, want], visual_embs - other)
        torch.testing.assert_close(canvas.extract(batch, "visual"), batch[:, want])
    actions = canvas.extract(batch, "action")
    assert actions.shape == (4, 5, 256)
    # t_current=2: outputs are the positions at t >= 2
    assert sorted(layout.output_mask()) == list(range(2 * 64, 5 * 64))


# --------------------------------------------------------------------- declarative region frequency
def _frequency_layout():
    from canvas_core import CanvasLayout, RegionSpec

    return CanvasLayout(
        T=16, H=32, W=32, d_model=768,
        regions={
            "screen": (0, 16, 0, 24, 0, 24),  # raw tuple — period=1 default
            "mouse": RegionSpec(bounds=(0, 16, 24, 26, 0, 4), period=1, loss_weight=2.0),
            "thought": RegionSpec(bounds=(0, 4, 28, 32, 0, 8), period=4, loss_weight=1.0),
            "task_prompt": RegionSpec(bounds=(0, 1, 26, 28, 0, 4), is_output=False),
        },
    )


def test_regionspec_field_defaults_table():
    from canvas_core import RegionSpec

    spec = RegionSpec(bounds=(0, 1, 0, 1, 0, 1))
    assert (spec.period, spec.is_output, spec.loss_weight) == (1, True, 1.0)
    assert spec.default_attn == "cross_attention"
    assert spec.embedding_model == "openai/text-embedding-3-small"
    assert spec.semantic_type is None and spec.semantic_embedding is None
    # bounds is required
    names = [f.name for f in dataclasses.fields(RegionSpec)]
    assert names[:4] == ["bounds", "period", "is_output", "loss_weight"]
    with pytest.raises(TypeError):
        RegionSpec()  # type: ignore[call-arg]
    # raw tuples auto-wrap as RegionSpec(bounds=tuple) with defaults
    layout = _frequency_layout()
    assert layout.regions["screen"] == RegionSpec(bounds=(0, 16, 0, 24, 0, 24))


def test_loss_weight_mask_and_frame_mapping():
    layout = _frequency_layout()
    weights = layout.loss_weight_mask("cpu")  # (N,) tensor
    assert weights.shape == (16 * 32 * 32,)
    # reference: is_output regions add loss_weight at their positions, everything else is 0
    ref = torch.zeros(16 * 32 * 32)
    for name, spec in layout.regions.items():
        if not spec.is_output:
            continue
        t0, t1, h0, h1, w0, w1 = spec.bounds
        for t in range(t0, t1):
            for h in range(h0, h1):
                for w in range(w0, w1):
                    ref[t * 1024 + h * 32 + w] += spec.loss_weight
    assert torch.equal(weights.float().cpu(), ref)
    per_position_loss = torch.rand(16 * 32 * 32)
    loss = (per_position_loss * weights).sum() / weights.sum()
    assert torch.isfinite(loss)

    assert layout.real_frame("thought", canvas_t=2) == 8
    assert layout.canvas_frame("thought", real_t=8) == 2
    assert layout.canvas_frame("thought", real_t=7) is None
    assert [layout.real_frame("thought", t) for t in range(4)] == [0, 4, 8, 12]


# ------------------------------------------------------------------------ non-Euclidean connectivity
MULTI = [("robot1_cam", "robot1_cam", 1.0), ("robot1_action", "robot1_action", 1.0),
         ("robot2_cam", "robot2_cam", 1.0), ("robot2_action", "robot2_action", 1.0),
         ("shared_task", "shared_task", 1.0), ("robot1_action", "robot1_cam", 1.0),
         ("robot2_action", "robot2_cam", 1.0), ("robot1_cam", "robot2_cam", 0.5),
         ("robot2_cam", "robot1_cam", 0.5), ("shared_task", "robot1_cam", 1.0),
         ("shared_task", "robot2_cam", 1.0), ("robot1_action", "shared_task", 1.0),
         ("robot2_action", "shared_task", 1.0)]


def _multi_robot_layout():
    from canvas_core import CanvasLayout

    return CanvasLayout(T=2, H=4, W=4, d_model=16, regions={
        "robot1_cam": (0, 2, 0, 2, 0, 2), "robot2_cam": (0, 2, 0, 2, 2, 4),
        "robot1_action": (0, 2, 2, 3, 0, 2), "robot2_action": (0, 2, 2, 3, 2, 4),
        "shared_task": (0, 1, 3, 4, 0, 4)})


def test_multi_robot_topology_mask_and_ops():
    from canvas_core import CanvasTopology, Connection

    topology = CanvasTopology(connections=[Connection(src=s, dst=d, weight=w) for s, d, w in MULTI])
    layout = _multi_robot_layout()
    mask = topology.to_attention_mask(layout)  # (N, N) float
    n = layout.num_positions
    assert mask.shape == (n, n) and mask.dtype.is_floating_point
    ref = torch.zeros(n, n)
    for s, d, w in MULTI:
        for i in layout.region_indices(s):
            for j in layout.region_indices(d):
                ref[i, j] = max(ref[i, j].item(), 1.0)
    assert torch.equal((mask > 0).float(), ref)
    ops = topology.attention_ops()  # [(src, dst, weight, fn), ...]
    assert [op[:3] for op in ops] == MULTI
    assert all(op[3] == "cross_attention" for op in ops)


def _pairs(topo):
    return {(c.src, c.dst) for c in topo.connections}


def test_convenience_constructors():
    from canvas_core import CanvasTopology

    abc = ["a", "b", "c"]
    assert _pairs(CanvasTopology.dense(abc)) == {(x, y) for x in abc for y in abc}
    assert _pairs(CanvasTopology.isolated(abc)) == {(x, x) for x in abc}
    hub = _pairs(CanvasTopology.hub_spoke("task", ["r1", "r2"]))
    assert {("r1", "task"), ("task", "r1"), ("r2", "task"), ("task", "r2")} <= hub
    assert ("r1", "r2") not in hub and ("r2", "r1") not in hub
    chain = CanvasTopology.causal_chain(["obs", "plan", "act"])  # A -> B -> C
    # information flows obs -> plan -> act: plan reads obs, act reads plan; nothing reads the future
    assert {("plan", "obs"), ("act", "plan")} <= _pairs(chain)
    assert not {("obs", "plan"), ("plan", "act"), ("obs", "act"), ("act", "obs")} & _pairs(chain)
    ct = CanvasTopology.causal_temporal(["obs", "act"])
    # same-frame self + previous-frame cross, never a future frame
    for c in ct.connections:
        assert c.t_src is not None and c.t_dst is not None and c.t_dst <= c.t_src
    assert {(c.src, c.dst, c.t_src, c.t_dst) for c in ct.connections} >= {
        ("obs", "obs", 0, 0), ("act", "act", 0, 0), ("act", "obs", 0, -1), ("obs", "act", 0, -1)}


@pytest.mark.parametrize("t_src,t_dst", [(None, None), (0, 0), (0, -1), (None, 0)])
def test_temporal_connectivity_table(t_src, t_dst):
    """Brute force the README's semantics: for every reference frame ref, src positions at
    ref + t_src (all frames if None) attend to dst positions at ref + t_dst (all if None);
    out-of-bounds frames are skipped."""
    from canvas_core import CanvasLayout, CanvasTopology, Connection

    T = 4
    layout = CanvasLayout(T=T, H=2, W=2, d_model=8,
                          regions={"cam": (0, T, 0, 1, 0, 2), "action": (0, T, 1, 2, 0, 2)})
    mask = CanvasTopology([Connection(src="action", dst="cam", t_src=t_src, t_dst=t_dst)]).to_attention_mask(layout)

    def at(name, t):
        if t is None:
            return set(layout.region_indices(name))
        return set(layout.region_indices_at_t(name, t)) if 0 <= t < T else set()

    ref = torch.zeros(layout.num_positions, layout.num_positions)
    for r in range(T):
        for i in at("action", None if t_src is None else r + t_src):
            for j in at("cam", None if t_dst is None else r + t_dst):
                ref[i, j] = 1.0
    assert torch.equal((mask > 0).float(), ref)


# ------------------------------------------------------------------------ attention function types
def test_attention_ops_resolution_example():
    from canvas_core import CanvasLayout, CanvasTopology, Connection, RegionSpec

    layout = CanvasLayout(
        T=8, H=16, W=16, d_model=512,
        regions={
            "visual": RegionSpec(bounds=(0, 8, 0, 12, 0, 12), default_attn="cross_attention"),
            "proprio": RegionSpec(bounds=(0, 8, 12, 13, 0, 2), default_attn="linear_attention"),
            "thought": RegionSpec(bounds=(0, 4, 13, 15, 0, 4), default_attn="mamba"),
            "goal": RegionSpec(bounds=(0, 1, 15, 16, 0, 4), default_attn="cross_attention", is_output=False),
        },
    )
    topology = CanvasTopology(connections=[
        Connection(src="visual", dst="visual"),
        Connection(src="proprio", dst="proprio"),
        Connection(src="thought", dst="thought"),
        Connection(src="goal", dst="goal"),
        Connection(src="visual", dst="goal", fn="gated"),
        Connection(src="thought", dst="visual", fn="perceiver"),
        Connection(src="proprio", dst="visual", fn="pooling"),
        Connection(src="thought", dst="thought", fn="copy", t_src=0, t_dst=-1),
    ])
    assert topology.attention_ops(layout) == [
        ("visual", "visual", 1.0, "cross_attention"),
        ("proprio", "proprio", 1.0, "linear_attention"),
        ("thought", "thought", 1.0, "mamba"),
        ("goal", "goal", 1.0, "cross_attention"),
        ("visual", "goal", 1.0, "gated"),
        ("thought", "visual", 1.0, "perceiver"),
        ("proprio", "visual", 1.0, "pooling"),
        ("thought", "thought", 1.0, "copy"),
    ]
    # without a layout, region defaults are unknown: everything unset is cross_attention
    assert [op[3] for op in topology.attention_ops()][:4] == ["cross_attention"] * 4
    assert layout.region_numel("visual") == 8 * 144  # "compress 864 visual tokens" per 6 frames


def test_lineup_has_the_sixteen_declared_types():
    from canvas_core import ATTENTION_TYPES

    lineup = {"cross_attention", "linear_attention", "cosine_attention", "sigmoid_attention", "gated",
              "perceiver", "pooling", "copy", "mamba", "rwkv", "hyena", "sparse_attention",
              "local_attention", "none", "random_fixed", "mixture"}
    assert len(lineup) == 16 and lineup <= set(ATTENTION_TYPES)


# ------------------------------------------------------------------ semantic types, transfer distance
def _fake_embed(text: str, dim: int = 24) -> tuple:
    """Deterministic bag-of-words embedding: texts sharing words are close."""
    v = [0.0] * dim
    for word in text.lower().split():
        v[sum(map(ord, word)) % dim] += 1.0
    return tuple(v)


def _cosine_distance(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return 1.0 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_semantic_types_and_transfer_distance():
    from canvas_core import RegionSpec, transfer_distance

    embed = _fake_embed
    cam = RegionSpec(
        bounds=(0, 8, 0, 12, 0, 12),
        semantic_type="RGB video 224x224 30fps from front-facing monocular camera",
        semantic_embedding=embed("RGB video 224x224 30fps from front-facing monocular camera"),
        embedding_model="openai/text-embedding-3-small",
    )
    depth = RegionSpec(
        bounds=(0, 8, 0, 12, 0, 12),
        semantic_type="Metric depth map 224x224 from front-facing monocular camera",
        semantic_embedding=embed("Metric depth map 224x224 from front-facing monocular camera"),
    )
    joints = RegionSpec(
        bounds=(0, 8, 12, 13, 0, 1),
        semantic_type="7-DOF joint angles at 30Hz",
        semantic_embedding=embed("7-DOF joint angles at 30Hz"),
    )
    d_depth, d_joints = transfer_distance(cam, depth), transfer_distance(cam, joints)
    assert d_depth == pytest.approx(_cosine_distance(cam.semantic_embedding, depth.semantic_embedding))
    assert d_joints == pytest.approx(_cosine_distance(cam.semantic_embedding, joints.semantic_embedding))
    assert d_depth < d_joints  # depth is cheaper to bridge than joints
    assert transfer_distance(cam, cam) == pytest.approx(0.0, abs=1e-9)


# --------------------------------------------------------------------------------- canvas schemas
def _robot_schema():
    from canvas_core import CanvasLayout, CanvasSchema, CanvasTopology, Connection, RegionSpec

    return CanvasSchema(
        layout=CanvasLayout(
            T=8, H=16, W=16, d_model=256,
            regions={
                "visual": RegionSpec(bounds=(0, 8, 0, 12, 0, 12), semantic_type="RGB video 224x224",
                                     semantic_embedding=(0.12, -0.05, 0.90, 0.10)),
                "action": RegionSpec(bounds=(0, 8, 12, 14, 0, 2), loss_weight=2.0,
                                     semantic_type="6-DOF end-effector + gripper",
                                     semantic_embedding=(0.31, 0.08, -0.20, 0.85)),
            },
        ),
        topology=CanvasTopology(connections=[
            Connection(src="visual", dst="visual"),
            Connection(src="action", dst="visual"),
            Connection(src="action", dst="action"),
        ]),
        metadata={"model": "CogVideoX-2B", "data": "bridge_v2"},
    )


def test_canvas_schema_json_roundtrip_and_compatible_regions(tmp_path):
    from canvas_core import CanvasLayout, CanvasSchema, RegionSpec

    schema = _robot_schema()
    path = tmp_path / "robot_v1.json"
    schema.to_json(str(path))
    loaded = CanvasSchema.from_json(str(path))
    assert loaded.layout == schema.layout
    assert loaded.topology.connections == schema.topology.connections
    assert loaded.metadata == {"model": "CogVideoX-2B", "data": "bridge_v2"}
    assert loaded.schema_hash() == schema.schema_hash()
    assert CanvasSchema.from_dict(schema.to_dict()).to_dict() == schema.to_dict()

    other = CanvasSchema(layout=CanvasLayout(T=4, H=8, W=8, d_model=256, regions={
        "camera": RegionSpec(bounds=(0, 4, 0, 6, 0, 6), semantic_embedding=(0.10, -0.04, 0.88, 0.15)),
        "gripper_cmd": RegionSpec(bounds=(0, 4, 6, 7, 0, 2), semantic_embedding=(0.30, 0.02, -0.10, 0.80)),
        "audio": RegionSpec(bounds=(0, 4, 7, 8, 0, 2), semantic_embedding=(-0.9, 0.4, 0.0, -0.1)),
    }))
    pairs = schema.compatible_regions(other, threshold=0.3)
    ref = []
    for a, sa in schema.layout.regions.items():
        for b, sb in other.layout.regions.items():
            d = _cosine_distance(sa.semantic_embedding, sb.semantic_embedding)
            if d <= 0.3:
                ref.append((a, b, d))
    ref.sort(key=lambda p: p[2])
    assert [(a, b) for a, b, _ in pairs] == [(a, b) for a, b, _ in ref]
    assert {(a, b) for a, b, _ in pairs} == {("visual", "camera"), ("action", "gripper_cmd")}
    assert [d for *_, d in pairs] == pytest.approx([d for *_, d in ref])


# ------------------------------------------------------------------------- API reference, freezing
API_REFERENCE = ["CanvasLayout", "RegionSpec", "SpatiotemporalCanvas", "Connection", "CanvasTopology",
                 "ATTENTION_TYPES", "transfer_distance", "CanvasSchema", "ActionHead", "LoopedBlockWrapper",
                 "graft_looped_blocks", "freeze_full", "freeze_half", "CurriculumScheduler",
                 "SharpeningSchedule", "save_loop_checkpoint"]


def test_api_reference_table():
    from canvas_core import ActionHead, CanvasTopology

    for name in API_REFERENCE:
        assert getattr(canvas_core, name) is not None, name
    assert hasattr(CanvasTopology, "resolve_fn")
    head = ActionHead(latent_channels=16, action_dim=7)  # latent channels -> robot actions
    assert head(torch.randn(2, 3, 16, 4, 4)).shape == (2, 7)


class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return x + self.fc(x)


class _Tiny(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.patch_embed = nn.Linear(4, d)
        self.transformer_blocks = nn.ModuleList([_Block(d) for _ in range(2)])
        self.proj_out = nn.Linear(d, 4)

    def forward(self, x):
        x = self.patch_embed(x)
        for b in self.transformer_blocks:
            x = b(x)
        return self.proj_out(x)


@pytest.mark.parametrize("freeze", ["full", "half", "none"])
def test_freeze_strategies(freeze):
    from canvas_core import graft_looped_blocks

    model = _Tiny()
    blocks, head = graft_looped_blocks(model, max_loops=3, freeze=freeze, action_dim=7,
                                       latent_channels=4, inner_dim=8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    loop_params = {n for n in trainable if "loop_" in n}
    assert loop_params  # loop params always train
    patch = {n for n, _ in model.named_parameters() if n.startswith("patch_embed")}
    backbone_rest = {n for n, _ in model.named_parameters()
                     if not n.startswith("patch_embed") and "loop_" not in n}
    if freeze == "full":  # everything except loops
        assert trainable == loop_params
    elif freeze == "half":  # only patch_embed
        assert not (patch & trainable) and backbone_rest <= trainable
    else:  # nothing
        assert trainable == {n for n, _ in model.named_parameters()}
    assert len(blocks) == 2 and all(p.requires_grad for p in head.parameters())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the README calls loss_weight_mask('cuda')")
def test_loss_weight_mask_on_cuda_as_written():
    layout = _frequency_layout()
    weights = layout.loss_weight_mask("cuda")  # (N,) tensor, as in the README
    assert weights.device.type == "cuda"
    assert torch.equal(weights.cpu(), layout.loss_weight_mask("cpu").cpu())
