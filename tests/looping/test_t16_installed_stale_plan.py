"""An installed topology takes the stamps its plan was lowered with: a plan whose topology
changed after lowering is refused at install instead of being run with the old connections."""

import pytest

from canvas_core import CanvasLayout, CanvasTopology, Connection
from canvas_core.compiler.lowering import lower
from canvas_core.errors import SchemaError
from canvas_core.looping.installed import InstalledTopology


def test_a_plan_changed_after_lowering_is_refused_at_install():
    layout = CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})
    topology = CanvasTopology([Connection("a", "a")])
    plan = lower(topology, layout)
    topology.connections.append(Connection("b", "a"))
    with pytest.raises(SchemaError, match="lower the plan again"):
        InstalledTopology(plan=plan, tokens=None, softmax_types=("cross_attention",), kernels={}, n_heads=1,
                          head_dim=8)
