"""``CanvasTopology.to_additive_mask`` agrees with the runtime for every weight the schema takes.

The runtime biases a link by ``log(weight)`` computed in float64; the additive mask must carry
the same bias (rounded to float32 only after the log), also for weights far below float32's
range, where a cast before the log loses the link altogether.
"""

import math

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from canvas_core import CanvasLayout, CanvasTopology, Connection  # noqa: E402
from canvas_core.errors import SchemaError  # noqa: E402
from canvas_core.runtime.canvas_attention import CanvasAttention  # noqa: E402

_LAYOUT = CanvasLayout(T=1, spatial_shape=(3,), d_model=8,
                       regions={"q": (0, 1, 0, 1), "k1": (0, 1, 1, 2), "k2": (0, 1, 2, 3)})
_SMALLEST_DOUBLE = 5e-324  # the smallest positive float64 (a subnormal)


@pytest.mark.parametrize("w", [0.5, 1e-30, 1e-35, 1e-40, 1e-50, 1e-300, _SMALLEST_DOUBLE, 3e38])  # above 3.4e38 is refused
def test_bias_is_log_weight_in_float32(w):
    topo = CanvasTopology([Connection("q", "k1", weight=1.0), Connection("q", "k2", weight=w)])
    am = topo.to_additive_mask(_LAYOUT)
    assert am.dtype == torch.float32
    want = torch.tensor(math.log(w), dtype=torch.float32)  # log in float64, then the cast
    assert torch.isfinite(am[0, 2])
    assert am[0, 2] == want
    assert am[0, 1] == 0.0 and am[0, 0] == -math.inf


def test_smallest_double_bias_fits_float32():
    assert math.log(_SMALLEST_DOUBLE) == pytest.approx(-744.44, abs=0.01)
    assert torch.isfinite(torch.tensor(math.log(_SMALLEST_DOUBLE), dtype=torch.float32))


@pytest.mark.parametrize("w", [1e-50, _SMALLEST_DOUBLE])
def test_row_whose_only_key_is_tiny_matches_the_layer(w):
    """Query ``q`` reads only ``k2``, with a weight float32 cannot hold: the runtime still reads
    ``k2``, so the mask must keep that link rather than treat the row as keyless (which would
    send ``q`` to itself)."""
    topo = CanvasTopology([Connection("q", "k2", weight=w)])
    am = topo.to_additive_mask(_LAYOUT)
    assert am[0, 0] == -math.inf and torch.isfinite(am[0, 2])

    torch.manual_seed(0)
    layer = CanvasAttention(topo, _LAYOUT, n_heads=2).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    y = layer(x)
    B, N, D = x.shape
    H, d = 2, D // 2
    q, k, v = (t.reshape(B, N, H, d).transpose(1, 2) for t in layer.qkv(x).split(D, dim=-1))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d) + am.double()
    attended = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, N, D)
    want = layer.out_proj(attended)
    torch.testing.assert_close(y[:, 0], want[:, 0])


@pytest.mark.parametrize("method", ["to_additive_mask", "to_attention_mask"])
def test_bad_device_is_a_schema_error_naming_the_method(method):
    topo = CanvasTopology([Connection("q", "k1")])
    with pytest.raises(SchemaError, match=f"{method}: device 'nodevice' is not a torch device"):
        getattr(topo, method)(_LAYOUT, device="nodevice")


def test_keyless_rows_attend_to_themselves_and_meta_device_works():
    topo = CanvasTopology([Connection("q", "k1")])
    am = topo.to_additive_mask(_LAYOUT)
    assert am[1, 1] == 0.0 and am[2, 2] == 0.0 and am[1, 0] == -math.inf
    assert topo.to_additive_mask(_LAYOUT, device="meta").shape == (3, 3)


@pytest.mark.parametrize("w", [0.5, 1e-40, 1e-46, 1e-50, _SMALLEST_DOUBLE])
def test_attention_mask_shows_every_link_as_linked(w):
    # float32 rounds these weights to a subnormal or to 0; 0 would read as "not linked"
    topo = CanvasTopology([Connection("q", "k1", weight=1.0), Connection("q", "k2", weight=w)])
    mask = topo.to_attention_mask(_LAYOUT)
    additive = topo.to_additive_mask(_LAYOUT)
    assert mask[0, 2] > 0 and mask[0, 0] == 0
    assert torch.equal((mask[0] > 0), torch.isfinite(additive[0]))
