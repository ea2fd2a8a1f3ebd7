"""A region whose program has an IdentitySpec gets its binder from the runtime automatically."""

from __future__ import annotations

import pytest
import torch

from canvas_core import (
    CanvasError,
    CanvasLayout,
    CanvasProgram,
    CanvasSchema,
    IdentitySpec,
    RegionProgram,
    SpatiotemporalCanvas,
)
from canvas_core.errors import UnknownNameError


def program(identity):
    layout = CanvasLayout(T=3, H=4, W=4, d_model=16, regions={
        "objects": (0, 3, 0, 3, 0, 4), "action": (0, 3, 3, 4, 0, 2)})
    return CanvasProgram(schema=CanvasSchema(layout), regions={
        "objects": RegionProgram(family="observation", identity=identity),
        "action": RegionProgram(family="action")})


def test_identity_region_gets_a_binder_and_carries_state():
    prog = program(IdentitySpec(mode="persistent", slot_capacity=5))
    canvas = SpatiotemporalCanvas(prog.schema.layout, program=prog)
    assert set(canvas.identity_binders.keys()) == {"objects"}
    x = canvas.create_empty(2)
    slots, states = canvas.bind_identities(x)
    assert slots["objects"].shape == (2, 3, 5, 16)  # (B, frames, n_slots, D)
    assert torch.isfinite(slots["objects"]).all()
    # persistent: continuing from the returned state differs from starting afresh
    again, _ = canvas.bind_identities(x, states)
    assert not torch.allclose(again["objects"][:, 0], slots["objects"][:, 0])
    # and the binder trains with the rest of the canvas module
    again["objects"].sum().backward()
    assert any(p.grad is not None for p in canvas.identity_binders.parameters())


def test_unknown_binding_fn_is_a_clear_error():
    with pytest.raises(UnknownNameError) as info:
        SpatiotemporalCanvas(program(IdentitySpec(binding_fn="hungarian")).schema.layout,
                             program=program(IdentitySpec(binding_fn="hungarian")))
    assert "hungarian" in str(info.value) and "cross_attention" in str(info.value)


def test_no_identity_regions():
    prog = program(None)
    canvas = SpatiotemporalCanvas(prog.schema.layout, program=prog)
    assert canvas.identity_binders is None
    with pytest.raises(CanvasError, match="no identity regions"):
        canvas.bind_identities(canvas.create_empty(1))
