"""The compiler's cortex pass: intra-zone connections get the zone's local type and tiling."""

from __future__ import annotations

import pytest

from canvas_core import (
    CanvasLayout, CanvasProgram, CanvasSchema, CanvasTopology, Connection, CortexRegistry, CortexSpec,
    MaskSpec, ProgramCompiler,
)
from canvas_core.errors import CanvasTypeError


def build():
    layout = CanvasLayout(T=2, H=8, W=8, d_model=16, regions={
        "camera": (0, 2, 0, 4, 0, 8), "depth": (0, 2, 4, 8, 0, 4), "action": (0, 2, 4, 5, 4, 8)})
    topo = CanvasTopology([Connection("camera", "depth"), Connection("camera", "camera", fn="cross_attention"),
                           Connection("action", "camera")])
    registry = CortexRegistry()
    registry.register(CortexSpec(name="visual", bounds=(0, 2, 0, 8, 0, 8), tile=(4, 4)))
    registry.assign("camera", "visual")
    registry.assign("depth", "visual")
    return CanvasProgram(schema=CanvasSchema(layout, topo)), registry


def test_cortex_pass_rewrites_only_intra_zone_connections():
    program, registry = build()
    compiled = ProgramCompiler(program).compile(cortex=registry)
    c0, c1, c2 = compiled.active_connections
    assert c0.fn == "local_attention" and c0.mask == MaskSpec(kind="tile", tile_shape=(4, 4))
    assert c1.fn == "cross_attention" and c1.mask == MaskSpec(kind="tile", tile_shape=(4, 4))  # explicit fn kept
    assert c2.fn is None and c2.mask is None  # action is in no zone
    assert compiled.plan.resolutions[0].requested == "local_attention"
    # the tile mask shrinks the camera -> depth pairs: tiles (4, 4) on an 8x8 grid
    plain = ProgramCompiler(program).compile()
    assert compiled.plan is not None and plain.plan is not None
    assert compiled.schema.topology.to_attention_mask(compiled.schema.layout).count_nonzero() < \
        plain.schema.topology.to_attention_mask(plain.schema.layout).count_nonzero()


def test_cortex_must_be_a_registry():
    program, _ = build()
    with pytest.raises(CanvasTypeError, match="CortexRegistry"):
        ProgramCompiler(program).compile(cortex="visual")
