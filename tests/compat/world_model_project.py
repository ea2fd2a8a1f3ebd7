"""A small world-model project written against canvas-engineering 0.5.0's public API (the API
of seed documents 000-003), used by tests/compat/test_migration_project.py to run the same code under both package
names. Only the import line below differs between the two runs (the test rewrites it)."""

import canvas_engineering as ce  # the one line a user changes (to canvas_core)

from dataclasses import dataclass, field
from typing import List

import torch


@dataclass
class Camera:
    rgb: ce.Field = ce.Field(4, 4, family="observation")
    depth: ce.Field = ce.Field(2, 2, family="observation", period=2)


@dataclass
class Agent:
    belief__mean: ce.Field = ce.Field(2, 2, family="state")
    joint_pos: ce.Field = ce.Field(1, 3, family="state")
    act: ce.Field = ce.Field(1, 2, family="action", loss_weight=2.0)


@dataclass
class Financial:
    yield_curves__five_year: ce.Field = ce.Field(1, 4, family="observation")


@dataclass
class World:
    camera: Camera = field(default_factory=Camera)
    markets: Financial = field(default_factory=Financial)
    agents: List[Agent] = field(default_factory=lambda: [Agent(), Agent()])
    memory: ce.Field = ce.Field(2, 3, family="memory")
    surprise: ce.Field = ce.Field(1, 1, family="residual", carrier="residual")


def run(seed: int = 0) -> dict:
    """Everything a script would read or save, as plain data and state dicts."""
    torch.manual_seed(seed)
    policy = ce.ConnectivityPolicy(intra="dense", array_element="ring", temporal="causal")
    bound, program = ce.compile_program(World(), T=4, d_model=32, connectivity=policy)
    layout = bound.layout
    topo = program.schema.topology
    out = {
        "spatial_shape": tuple(layout.spatial_shape),
        "H_W": (layout.H, layout.W),
        "num_positions": layout.num_positions,
        "fields": list(bound.field_names),
        "bounds": {n: tuple(layout.region_spec(n).bounds) for n in bound.field_names},
        "indices": {n: list(layout.region_indices(n)) for n in bound.field_names},
        "semantic": {n: layout.region_spec(n).semantic_type for n in bound.field_names},
        "connections": [(c.src, c.dst, c.t_src, c.t_dst, c.operator, c.weight) for c in topo.connections],
        "families": {n: rp.family for n, rp in program.regions.items()},
        "bound_connections": [(c.src, c.dst, c.operator) for c in bound.topology.connections],
        "schema_json": program.schema.to_dict()["topology"],
        "mask": topo.to_attention_mask(layout),
        "bound_repr": repr(bound),
        "bound_summary": bound.summary(),
        "topology_repr": repr(topo),
        "topology_summary": topo.summary(),
        "program_repr": repr(program),
        "program_summary": program.summary(),
    }
    # semantic conditioning: the texts the user's embedder receives
    seen = []

    def embed(texts):
        seen.extend(texts)
        return [[float(len(t)), float(sum(map(ord, t)) % 97), 1.0, 0.5] for t in texts]

    out["conditioner"] = bound.build_semantic_conditioner(embed, embed_dim=4)
    out["embedded_texts"] = list(seen)
    out["head"] = ce.ActionHead(latent_channels=12, action_dim=4)
    # a canvas with the program's family/carrier embeddings; its checkpoint
    canvas = ce.SpatiotemporalCanvas(layout, program=program)
    out["canvas"] = canvas
    out["has_family_carrier_embedding"] = canvas.family_carrier_embedding is not None
    # compile for deploy: a region frozen through its learning spec
    prog2 = ce.CanvasProgram(schema=program.schema, regions={
        **program.regions,
        "memory": ce.RegionProgram(family="memory", learning=ce.LearningSpec(compile_mode="freeze")),
    })
    compiled = ce.ProgramCompiler(prog2).compile()
    out["frozen"] = sorted(compiled.frozen_regions)
    out["compiled_repr"] = repr(compiled)
    # clocks, residuals, learned scheduling
    clock = ce.ClockSpec(domain="external", max_inner_steps=4)
    out["clock"] = (clock.domain, clock.max_inner_steps)
    acc = ce.ResidualAccumulator(["surprise"])
    acc.update("surprise", torch.ones(2, 3))
    out["accumulator_repr"] = repr(acc)
    out["summaries"] = acc.summaries()
    learned = ce.LearnedScheduler(n_regions=len(bound.field_names), summary_dim=2, max_active=3)
    out["learned"] = learned
    out["learned_repr"] = repr(learned)
    out["scheduler_repr"] = repr(ce.RegionScheduler(program))
    return out
