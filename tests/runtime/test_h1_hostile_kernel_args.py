"""Bad kernel arguments, empty batches and additive masks: each is a ``CanvasError`` naming what
to fix, or the documented result; never a bare torch / Python error or a silently rounded value."""

from __future__ import annotations

import math

import pytest
import torch

from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection
from canvas_core.compiler.lowering import lower
from canvas_core.errors import CanvasTypeError, CompileError, ShapeError
from canvas_core.plugins import create_attention
from canvas_core.runtime.kernels import kernel_for
from canvas_core.runtime.type_call import call_attention_type, key_set_groups

torch.set_num_threads(1)

LAYOUT = CanvasLayout(T=2, H=4, W=4, d_model=16, regions={"a": (0, 2, 0, 2, 0, 4), "b": (0, 2, 2, 4, 0, 4)})
TOPO = CanvasTopology(connections=[Connection("a", "a"), Connection("b", "a", fn="linear_attention")])


def _layer(**kw):
    return CanvasAttention(TOPO, LAYOUT, d_model=16, n_heads=2, **kw)


@pytest.mark.parametrize("opts", ["sparse", [("mode", "dense")], 3])
def test_kernel_options_that_are_no_dict_are_a_type_error(opts):
    with pytest.raises(CanvasTypeError, match="kernel_options=.* is not a dict"):
        _layer(kernel_options=opts)


@pytest.mark.parametrize("opts, name", [
    ({"block_size": 2.5}, "block_size"), ({"block_size": True}, "block_size"), ({"block_size": "8"}, "block_size"),
    ({"max_buckets": -1}, "max_buckets"), ({"small_n": -1}, "small_n"), ({"dense_threshold": math.nan}, "dense_threshold"),
])
@pytest.mark.parametrize("kernel", [None, "reference"])
def test_reference_kernel_options_are_checked_not_rounded(opts, name, kernel):
    with pytest.raises(CompileError, match=name):
        _layer(kernel=kernel, kernel_options=opts)


@pytest.mark.parametrize("kernel", [None, "reference", "auto"])
def test_an_option_the_reference_kernel_does_not_take_is_named(kernel):
    with pytest.raises(CanvasTypeError) as info:
        _layer(kernel=kernel, kernel_options={"compile": False})
    msg = str(info.value)
    assert "['compile']" in msg and "'block_size'" in msg and len(msg) < 300


def test_valid_reference_options_still_build():
    layer = _layer(kernel="reference", kernel_options={"mode": "sparse", "block_size": 4, "max_buckets": None})
    assert torch.isfinite(layer(torch.randn(1, 32, 16))).all()


@pytest.mark.parametrize("mode", ["dense", "segments", "sparse"])
def test_an_empty_batch_runs_in_every_mode(mode):
    opts = {"mode": mode, **({"block_size": 4} if mode == "sparse" else {})}
    layer = _layer(kernel="reference", kernel_options=opts)
    assert layer(torch.randn(0, 32, 16)).shape == (0, 32, 16)


def test_kernel_for_a_module_type_is_refused():
    plan = lower(TOPO, LAYOUT)
    with pytest.raises(CompileError, match="'linear_attention' runs its own module"):
        kernel_for(plan, "linear_attention", n_heads=2, head_dim=8)
    assert kernel_for(plan, "cross_attention", n_heads=2, head_dim=8)(*(torch.randn(1, 2, 32, 8),) * 3,
                                                                     scale=0.3).shape == (1, 2, 32, 8)


@pytest.mark.parametrize("fn", ["linear_attention", "copy", "perceiver", "pooling"])
def test_an_additive_mask_reads_the_keys_it_allows(fn):
    """``key_mask`` may be additive (0 = linked, -inf = blocked): a per-key-set type must read the
    same keys as with the bool mask, not the inverse."""
    torch.manual_seed(0)
    module = create_attention(fn, d_model=8, n_heads=2).eval()
    q, k = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    linked = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [1, 0, 1, 0, 1]], dtype=torch.bool)
    additive = torch.zeros(3, 5).masked_fill(~linked, -math.inf)
    torch.testing.assert_close(call_attention_type(module, q, k, k, additive),
                               call_attention_type(module, q, k, k, linked))


def test_key_set_groups_of_a_1d_mask_is_a_shape_error():
    with pytest.raises(ShapeError, match="2-d"):
        key_set_groups(torch.ones(5, dtype=torch.bool))


@pytest.mark.parametrize("form", ["(B, Nk)", "int (Nq, Nk)"])
def test_a_non_finite_key_under_every_documented_mask_form(form):
    """An exact type's masked call keeps a NaN key to the rows that link it for a ``(B, Nk)`` mask
    (which the types read per sample) and an integer mask (0 blocks), as for a bool one."""
    torch.manual_seed(0)
    module = create_attention("pooling", d_model=8, n_heads=2).eval()
    q, k = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    k[0, 4] = math.nan
    if form == "(B, Nk)":  # sample 0 does not link key 4
        mask, want = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool), [[False] * 3] * 2
    else:
        mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
        want = [[False, True, False], [False, False, False]]
    assert call_attention_type(module, q, k, k, mask).isnan().any(-1).tolist() == want


def test_dispatcher_arguments_are_checked_at_build():
    from canvas_core import AttentionDispatcher

    with pytest.raises(CanvasTypeError, match="skip_temporal must be True or False, got 'no'"):
        AttentionDispatcher(TOPO, LAYOUT, 16, skip_temporal="no")
    with pytest.raises(CanvasTypeError, match="needs a CanvasTopology, got list"):
        AttentionDispatcher(list(TOPO.connections), LAYOUT, 16, skip_temporal=True)

    class NoUpdate:
        region_names = ("a",)

    with pytest.raises(CanvasTypeError, match="residual_accumulator NoUpdate has no update"):
        AttentionDispatcher(TOPO, LAYOUT, 16, residual_accumulator=NoUpdate())

    class OneName:  # region_names a single string: that region, not its letters
        region_names = "ab"
        seen: list = []

        def update(self, region, error):
            self.seen.append(region)

    lay = CanvasLayout(T=2, H=4, W=4, d_model=16, regions={"ab": (0, 2, 0, 2, 0, 4), "a": (0, 2, 2, 4, 0, 2),
                                                           "b": (0, 2, 2, 4, 2, 4)})
    acc = OneName()
    AttentionDispatcher(CanvasTopology(connections=[Connection("ab", "a")]), lay, 16, residual_accumulator=acc)(
        torch.randn(1, 32, 16))
    assert acc.seen == ["ab"]
