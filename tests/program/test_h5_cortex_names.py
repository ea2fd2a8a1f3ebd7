"""CortexRegistry given names or connections of the wrong kind: a CanvasTypeError naming the
method, not a TypeError / AttributeError from inside a dict lookup."""

from __future__ import annotations

import pytest

from canvas_core.errors import CanvasTypeError
from canvas_core.program.cortex import CortexRegistry, CortexSpec
from canvas_core.schema.topology import Connection


def _zones() -> CortexRegistry:
    zones = CortexRegistry()
    zones.register(CortexSpec("retina", bounds=(0, 2, 0, 16, 0, 16), tile=(8, 8)))
    zones.assign("rgb", "retina")
    zones.assign("flow", "retina")
    return zones


@pytest.mark.parametrize("call, text", [
    (lambda z: z.cortex_for(["rgb"]), r"cortex_for: region must be .*got list"),
    (lambda z: z.same_cortex("rgb", {"flow"}), r"same_cortex: region must be .*got set"),
    (lambda z: z.unassign(["rgb"]), r"unassign: region must be .*got list"),
    (lambda z: z.regions_in(["retina"]), r"a cortex is named by a string, got list"),
    (lambda z: z.assign("x", ["retina"]), r"a cortex is named by a string, got list"),
    (lambda z: z.unregister({}), r"a cortex is named by a string, got dict"),
    (lambda z: z.mask_for(object()), r"mask_for needs a Connection"),
    (lambda z: z.resolve_fn(("rgb", "flow")), r"resolve_fn needs a Connection"),
], ids=["cortex_for", "same_cortex", "unassign", "regions_in", "assign", "unregister", "mask_for", "resolve_fn"])
def test_wrong_kinds_are_named(call, text):
    with pytest.raises(CanvasTypeError, match=text):
        call(_zones())


def test_good_calls_are_unchanged():
    zones = _zones()
    assert zones.same_cortex("rgb", "flow") and not zones.same_cortex("rgb", "") and zones.cortex_for("") is None
    conn = Connection("rgb", "flow")
    assert zones.resolve_fn(conn) == "local_attention" and zones.mask_for(conn).tile_shape == (8, 8)
