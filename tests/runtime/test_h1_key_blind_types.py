"""A type whose output ignores keys and values (``reads_keys = False``, e.g. ``none``) is not
NaN-ed by the masked call's guard when a key it is linked to holds a NaN or inf.

The guard of ``call_exact_masked`` sets every row linking a non-finite key to NaN, which is what a
call with the query's own key set gives for a type that reads keys; for ``none`` that call gives
zeros, so the masked call must too, in canvas layers and in rollouts alike.
"""

from __future__ import annotations

import math

import pytest
import torch

import canvas_core
from canvas_core import CanvasAttention
from canvas_core.attention.simple import NoneAttention, PoolingAttention
from canvas_core.runtime.type_call import call_exact_masked, reads_keys
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection
from tests.runtime._rollout_models import build_model, frames

torch.set_num_threads(1)

T = 6
LAYOUT = CanvasLayout(T=T, H=1, W=2, d_model=8, regions={"a": (0, T, 0, 1, 0, 1), "b": (0, T, 0, 1, 1, 2)})


def _causal_union(fn: str) -> CanvasTopology:
    """``b`` reads ``a`` at its own frame and every earlier one: overlapping key sets, so an exact
    type gets ONE masked call over all of ``a``."""
    return CanvasTopology(connections=[Connection("b", "a", fn=fn, t_src=0, t_dst=-d, temporal_fill="drop")
                                       for d in range(T)])


def _poisoned(bad: float) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(1, LAYOUT.num_positions, 8, dtype=torch.float64)
    x[0, LAYOUT.region_indices("a")[3], 2] = bad
    return x


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_none_rows_stay_zero_in_a_layer_with_a_non_finite_key(bad):
    torch.manual_seed(0)
    layer = CanvasAttention(_causal_union("none"), LAYOUT, d_model=8, n_heads=2).double().eval()
    with torch.no_grad():
        out = layer(_poisoned(bad))[0]
    rows = out[LAYOUT.region_indices("b")]
    assert torch.equal(rows, torch.zeros_like(rows))


def test_a_reading_type_still_gets_nan_exactly_where_it_links_the_key():
    """The guard stays for every type that reads keys (pooling: frames 3-5 of ``b``, not 0-2)."""
    torch.manual_seed(0)
    layer = CanvasAttention(_causal_union("pooling"), LAYOUT, d_model=8, n_heads=2).double().eval()
    with torch.no_grad():
        out = layer(_poisoned(math.nan))[0]
    b = LAYOUT.region_indices("b")
    assert [t for t in range(T) if bool(out[b[t]].isnan().any())] == [3, 4, 5]


def test_none_rolls_out_without_nan_rows():
    model = build_model(_causal_union("none"), LAYOUT, depth=2)
    x = _poisoned(math.nan)
    b_cols = [LAYOUT.region_indices("b")[t] - t * 2 for t in range(T)]  # b's column within a frame
    with torch.no_grad(), canvas_core.incremental(model, LAYOUT) as roll:
        for t, x_t in enumerate(frames(x, 2)):
            got = roll.step(x_t)
            assert torch.isfinite(got[:, b_cols[t]]).all(), f"frame {t}: b went non-finite"


class KeyBlind(torch.nn.Module):
    """A plugin-style exact type whose output is a function of the queries only."""

    key_mask_exact = True
    reads_keys = False

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, queries, keys, values, key_mask=None):
        return self.lin(queries)


def test_call_exact_masked_honours_the_declaration():
    torch.manual_seed(0)
    q, k = torch.randn(1, 3, 4), torch.randn(1, 5, 4)
    k[0, 4] = math.nan
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    blind = KeyBlind()
    torch.testing.assert_close(call_exact_masked(blind, q, k, k, mask), blind(q, k, k))
    assert torch.equal(call_exact_masked(NoneAttention(4, 1), q, k, k, mask), torch.zeros(1, 3, 4))
    pooled = call_exact_masked(PoolingAttention(4, 1), q, k, k, mask)  # reads keys: rows 1, 2 NaN
    assert pooled.isnan().any(-1)[0].tolist() == [False, True, True]
    assert not reads_keys(blind) and not reads_keys(NoneAttention(4, 1)) and reads_keys(PoolingAttention(4, 1))
