"""A layout given beside a plan is compared with the plan's in what lowering reads of it only
(``T``, ``spatial_shape``, each region's bounds, period and ``default_attn``), by the same check
in the layers (``CanvasAttention`` / ``AttentionDispatcher``) and in the mask functions
(``block_mask``, ``attention_mask``): a layout differing in ``d_model``, ``t_current`` or a
region's ``loss_weight`` / ``semantic_type`` / ``is_output``, or a canvas-engineering layout whose
regions are bare bounds tuples, is accepted; a real difference is refused naming it.  The layers
still take ``d_model`` from a given layout when no ``d_model`` argument is passed, and an explicit
one wins."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import pytest
import torch

from canvas_core import AttentionDispatcher, CanvasAttention, CanvasLayout, CanvasTopology, Connection, RegionSpec
from canvas_core.compiler.lowering import lower
from canvas_core.compiler.masks import block_mask
from canvas_core.errors import SchemaError
from canvas_core.runtime.plan_tensors import attention_mask

REGIONS = {"a": (0, 2, 0, 2, 0, 4), "b": (0, 2, 2, 4, 0, 4)}


def _layout(**kw: Any) -> CanvasLayout:
    args = dict(T=2, H=4, W=4, d_model=16, regions=dict(REGIONS))
    args.update(kw)
    return CanvasLayout(**args)


def _topology() -> CanvasTopology:
    return CanvasTopology(connections=[Connection("a", "b"), Connection("b", "b", t_src=0, t_dst=-1)])


def _plan():
    return lower(_topology(), _layout())


def _relabelled() -> CanvasLayout:
    spec = RegionSpec(bounds=REGIONS["a"])
    spec = dataclasses.replace(spec, loss_weight=2.0, semantic_type="video frame", is_output=False)
    return _layout(regions={"a": spec, "b": REGIONS["b"]})


def _ce_tuples() -> Any:
    ce = pytest.importorskip("canvas_engineering")
    return ce.CanvasLayout(T=2, H=4, W=4, d_model=16, regions=dict(REGIONS))


def _ce_specs() -> Any:
    ce = pytest.importorskip("canvas_engineering")
    return ce.CanvasLayout(T=2, H=4, W=4, d_model=16, regions={k: ce.RegionSpec(bounds=v) for k, v in REGIONS.items()})


#: layouts that place every position as the plan's does
ALIKE: dict = {
    "another d_model": lambda: _layout(d_model=64),
    "another t_current": lambda: _layout(t_current=1),
    "loss_weight, semantic_type, is_output": _relabelled,
    "canvas-engineering, tuple regions": _ce_tuples,
    "canvas-engineering, RegionSpec regions": _ce_specs,
}

#: (another layout, what the refusal names)
OTHER: dict = {
    "bounds": (lambda: _layout(regions={"a": (0, 2, 0, 1, 0, 4), "b": (0, 2, 1, 4, 0, 4)}),
               r"region 'a' bounds \(0, 2, 0, 1, 0, 4\) in the layout given, \(0, 2, 0, 2, 0, 4\) in the plan's"),
    "period": (lambda: _layout(regions={"a": RegionSpec(bounds=REGIONS["a"], period=2), "b": REGIONS["b"]}),
               r"region 'a' period 2 in the layout given, 1 in the plan's"),
    "T": (lambda: _layout(T=3), r"T=3 in the layout given, 2 in the plan's"),
    "spatial_shape": (lambda: _layout(W=5), r"spatial_shape=\(4, 5\) in the layout given, \(4, 4\) in the plan's"),
    "default_attn": (lambda: _layout(regions={"a": RegionSpec(bounds=REGIONS["a"], default_attn="linear_attention"),
                                              "b": REGIONS["b"]}),
                     r"region 'a' default_attn 'linear_attention' in the layout given, 'cross_attention' in the plan's"),
    "canvas-engineering tuple bounds": (
        lambda: _ce_tuples().__class__(T=2, H=4, W=4, d_model=16, regions={"a": (0, 2, 0, 2, 0, 4), "b": (0, 2, 3, 4, 0, 4)}),
        r"region 'b' bounds \(0, 2, 3, 4, 0, 4\) in the layout given, \(0, 2, 2, 4, 0, 4\) in the plan's"),
}

MASKS: dict = {
    "block_mask": lambda lay, plan: block_mask(_topology(), lay, 4, plan=plan),
    "attention_mask": lambda lay, plan: attention_mask(_topology(), lay, plan=plan),
}


@pytest.mark.parametrize("alike", sorted(ALIKE))
def test_canvas_attention_accepts_a_layout_placing_positions_alike(alike: str) -> None:
    plan, layout = _plan(), ALIKE[alike]()
    x = torch.randn(2, plan.n, 16)
    torch.manual_seed(0)
    want = CanvasAttention(plan, None, d_model=16, n_heads=4)(x)
    torch.manual_seed(0)
    assert torch.equal(CanvasAttention(plan, layout, d_model=16, n_heads=4)(x), want)
    torch.manual_seed(0)
    assert AttentionDispatcher(plan, layout, d_model=16, n_heads=4)(x).shape == x.shape


@pytest.mark.parametrize("alike", sorted(ALIKE))
@pytest.mark.parametrize("mask", sorted(MASKS))
def test_the_masks_accept_a_layout_placing_positions_alike(mask: str, alike: str) -> None:
    plan = _plan()
    got, want = MASKS[mask](ALIKE[alike](), plan), MASKS[mask](plan.layout, plan)
    if mask == "attention_mask":
        assert torch.equal(got, want)
    else:
        assert got.plan is plan and got.density == want.density
        assert (got.kv_indices == want.kv_indices).all() and (got.full_kv_indices == want.full_kv_indices).all()


def test_the_layout_given_still_supplies_d_model_and_an_explicit_one_wins() -> None:
    plan, wide = _plan(), _layout(d_model=64)
    assert CanvasAttention(plan, wide, n_heads=4).d_model == 64  # from the layout given, as before
    assert CanvasAttention(plan, wide, d_model=64, n_heads=4).d_model == 64
    assert CanvasAttention(plan, wide, d_model=32, n_heads=4).d_model == 32  # the argument wins
    assert CanvasAttention(plan, None, n_heads=4).d_model == 16  # no layout: the plan's
    layer = CanvasAttention(plan, wide, n_heads=4)
    assert layer(torch.randn(1, plan.n, 64)).shape == (1, plan.n, 64)


@pytest.mark.parametrize("other", sorted(OTHER))
def test_canvas_attention_refuses_a_real_difference_naming_it(other: str) -> None:
    make, names = OTHER[other]
    layout = make()
    with pytest.raises(SchemaError, match=names) as info:
        CanvasAttention(_plan(), layout, n_heads=4)
    assert str(info.value).startswith("CanvasAttention(plan, layout): the layout given is not the one the plan")


@pytest.mark.parametrize("other", sorted(OTHER))
@pytest.mark.parametrize("mask", sorted(MASKS))
def test_the_masks_refuse_a_real_difference_naming_it(mask: str, other: str) -> None:
    make, names = OTHER[other]
    layout = make()
    with pytest.raises(SchemaError, match=names) as info:
        MASKS[mask](layout, _plan())
    msg = str(info.value)
    assert msg.startswith(f"{mask}: the layout given is not the one the plan was lowered from (")
    assert "leave plan out to lower this one" in msg


def test_many_differences_are_named_up_to_three() -> None:
    moved = {"a": (0, 1, 0, 2, 0, 4), "b": RegionSpec(bounds=(0, 1, 2, 4, 0, 4), period=2)}
    check: Callable[[], Any] = lambda: block_mask(None, _layout(T=3, W=5, regions=moved), 4, plan=_plan())
    with pytest.raises(SchemaError, match=r"^block_mask: .*\(T=3 .*; spatial_shape=.*; region 'a' bounds .* "
                                          r"\(and 2 more\)\)"):
        check()
