"""``kernel="flex"`` asked for on CPU names the kernel that runs there, ``flex_cpu``, and how to
ask for it (inference only), instead of only "runs on cuda only"."""

from __future__ import annotations

import pytest

import canvas_backend_flex
from canvas_core import RuntimeContext
from canvas_core.compiler import lower, resolve_plan
from canvas_core.errors import UnavailableError
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection


def _plan():
    layout = CanvasLayout(T=1, H=4, W=4, d_model=16, regions={"a": (0, 1, 0, 4, 0, 4)})
    return lower(CanvasTopology(connections=[Connection("a", "a")]), layout)


@pytest.mark.parametrize("requires_grad", [True, False])
def test_flex_on_cpu_points_to_flex_cpu(requires_grad):
    with pytest.raises(UnavailableError, match=r"runs on cuda only, not on cpu; on CPU the same kernel is "
                                               r"registered as kernel='flex_cpu' \(inference only: pass "
                                               r"requires_grad=False"):
        resolve_plan(_plan(), device="cpu", head_dim=8, preview=True, kernel="flex", requires_grad=requires_grad)


def test_the_hint_is_for_cpu_only():
    assert "flex_cpu" in canvas_backend_flex.check(RuntimeContext(device="cpu", head_dim=8))[0]
    assert canvas_backend_flex.check(RuntimeContext(device="cuda", head_dim=64)) == []
