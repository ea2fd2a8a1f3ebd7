"""A kernel is named by its registry name; the reference kernel's modes are options."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology  # noqa: E402
from canvas_core.runtime.kernels import REFERENCE_MODES  # noqa: E402


def _layer(**kw):
    layout = CanvasLayout(T=2, H=3, W=4, d_model=8, regions={"a": (0, 2, 0, 2, 0, 4), "b": (0, 2, 2, 3, 0, 4)})
    torch.manual_seed(0)
    return CanvasAttention(CanvasTopology.causal_temporal(["a", "b"]), layout, n_heads=2, **kw), layout


@pytest.mark.parametrize("mode", REFERENCE_MODES)
def test_mode_as_option_equals_the_deprecated_spelling(mode):
    new, layout = _layer(kernel="reference", kernel_options={"mode": mode})
    with pytest.warns(DeprecationWarning, match=f"kernel_options={{'mode': '{mode}'}}"):
        old, _ = _layer(kernel=mode)
    assert {k.mode for k in new.executor.kernels.values()} == {k.mode for k in old.executor.kernels.values()} == {mode}
    old.load_state_dict(new.state_dict())
    x = torch.randn(2, layout.num_positions, 8)
    torch.testing.assert_close(new(x), old(x), rtol=0, atol=0)
