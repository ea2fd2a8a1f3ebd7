"""A layer given a plan and a layout runs the plan's indices, which place the positions of the
plan's own layout: a layout that differs from it is refused when the layer is built (naming what
differs and how to fix it), not run as the plan's without a word; an equal copy is accepted.  A
plugin module refused for its dtype or device in a rollout step names the connections of its
type, as a layer's forward does."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from canvas_core import (AttentionDispatcher, CanvasAttention, CanvasLayout, CanvasTopology, Connection, RegionSpec,
                         incremental)
from canvas_core.compiler.lowering import lower
from canvas_core.errors import CanvasError, CanvasTypeError, SchemaError, ShapeError

REGIONS = {"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 0, 1, 2, 4)}


def _layout(**kw: Any) -> CanvasLayout:
    args = dict(T=2, H=1, W=4, d_model=8, regions=dict(REGIONS))
    args.update(kw)
    return CanvasLayout(**args)


def _plan():
    return lower(CanvasTopology(connections=[Connection("a", "b"), Connection("b", "b")]), _layout())


def _build(cls: Any, plan: Any, layout: Any) -> nn.Module:
    torch.manual_seed(0)
    if cls is AttentionDispatcher:
        return cls(plan, layout, d_model=8, n_heads=2)
    return cls(plan, layout, n_heads=2)


LAYERS = [CanvasAttention, AttentionDispatcher]

# (another layout, what the refusal names of it and of the plan's)
OTHERS = {
    "regions moved": (dict(regions={"a": (0, 2, 0, 1, 0, 1), "b": (0, 2, 0, 1, 1, 4)}),
                      r"region 'a' bounds \(0, 2, 0, 1, 0, 1\) in the layout given, \(0, 2, 0, 1, 0, 2\) in the plan's"),
    "one frame more": (dict(T=3, regions={"a": (0, 3, 0, 1, 0, 2), "b": (0, 3, 0, 1, 2, 4)}),
                       r"T=3 in the layout given, 2 in the plan's"),
    "wider grid": (dict(W=6), r"spatial_shape=\(1, 6\) in the layout given, \(1, 4\) in the plan's"),
    "a region more": (dict(W=6, regions={**REGIONS, "c": (0, 2, 0, 1, 4, 6)}), r"region\(s\) \['c'\] only in the layout given"),
    "another period": (dict(regions={"a": RegionSpec(bounds=(0, 2, 0, 1, 0, 2), period=2), "b": REGIONS["b"]}),
                       r"region 'a' period 2 in the layout given, 1 in the plan's"),
}


@pytest.mark.parametrize("other", sorted(OTHERS))
@pytest.mark.parametrize("cls", LAYERS)
def test_a_layout_other_than_the_plans_is_refused_naming_the_difference(cls: Any, other: str) -> None:
    kw, names = OTHERS[other]
    plan = _plan()
    with pytest.raises(SchemaError, match=names) as info:
        _build(cls, plan, _layout(**kw))
    msg = str(info.value)
    assert isinstance(info.value, CanvasError) and msg.startswith(f"{cls.__name__}(plan, layout): ")
    assert "not the one the plan was lowered from" in msg and "lower the plan from this layout" in msg


def test_the_foreign_layout_was_run_as_the_plans_before() -> None:
    """What the refusal prevents: the plan's positions updated, not the given layout's."""
    plan, moved = _plan(), _layout(**OTHERS["regions moved"][0])
    torch.manual_seed(0)
    own = CanvasAttention(CanvasTopology(connections=[Connection("a", "b"), Connection("b", "b")]), moved, n_heads=2)
    x = torch.randn(1, 8, 8)
    with pytest.raises(SchemaError):
        CanvasAttention(plan, moved, n_heads=2)
    # the plan's layer and the moved layout's layer really differ: the layout cannot be ignored
    assert not torch.allclose(_build(CanvasAttention, plan, None)(x), own(x))


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("copy_of", ["same object", "deep copy", "rebuilt equal", "other t_current"])
def test_the_plans_layout_or_an_equal_copy_is_accepted(cls: Any, copy_of: str) -> None:
    plan = _plan()
    layout = {"same object": lambda: plan.layout, "deep copy": lambda: copy.deepcopy(plan.layout),
              "rebuilt equal": lambda: _layout(regions=dict(reversed(list(REGIONS.items())))),
              "other t_current": lambda: _layout(t_current=1)}[copy_of]()
    x = torch.randn(2, 8, 8)
    want = _build(cls, plan, plan.layout)(x)
    assert torch.equal(_build(cls, plan, layout)(x), want)


def test_a_plan_without_a_layout_still_runs_its_own() -> None:
    plan = _plan()
    layer = _build(CanvasAttention, plan, None)
    assert layer.d_model == 8 and layer(torch.randn(1, 8, 8)).shape == (1, 8, 8)


def test_a_stale_plan_is_refused_as_stale_before_comparing() -> None:
    plan = _plan()
    plan.layout.regions["a"] = RegionSpec(bounds=(0, 2, 0, 1, 0, 1))
    with pytest.raises(SchemaError, match=r"before it was changed"):
        CanvasAttention(plan, _layout(), n_heads=2)


def test_a_layout_that_is_no_layout_is_refused() -> None:
    with pytest.raises(CanvasTypeError, match=r"CanvasAttention\(plan, layout\): layout must be a CanvasLayout, got str"):
        CanvasAttention(_plan(), "layout", d_model=8, n_heads=2)


def test_a_refused_layout_leaves_both_layouts_as_they_were() -> None:
    plan, moved = _plan(), _layout(**OTHERS["regions moved"][0])
    before = (copy.deepcopy(plan.layout), copy.deepcopy(moved), plan.layout.revision, moved.revision)
    with pytest.raises(SchemaError):
        CanvasAttention(plan, moved, n_heads=2)
    assert (plan.layout, moved, plan.layout.revision, moved.revision) == before


# --- a rollout step names the connections of a refused plugin module ---------------------------

class _Pooled(nn.Module):
    """Mean of the keys' values (per key set: no mask)."""

    def __init__(self, d_model: int, n_heads: int = 4, dropout: float = 0.0, **kw: Any) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model, **kw)

    def forward(self, queries, keys, values):
        return self.proj(values.mean(1, keepdim=True).expand_as(queries).contiguous())


class _MaskedPooled(_Pooled):
    """Mean of the linked keys' values, one call with the key mask."""

    key_mask_exact = True

    def forward(self, queries, keys, values, key_mask=None):
        w = torch.ones(queries.shape[1], keys.shape[1], device=values.device) if key_mask is None else key_mask
        w = w.to(values.dtype)
        w = w / w.sum(-1, keepdim=True).clamp_min(1)
        return self.proj(torch.matmul(w, values))


def _rollout_layer(module: Any, conns: list, **kw: Any) -> CanvasAttention:
    top = CanvasTopology(connections=[Connection("b", "b", t_src=0, t_dst=0)] + conns)
    layer = CanvasAttention(top, _layout(), d_model=8, n_heads=2,
                            attention_factory=lambda f, *a, **k: module(*a, **kw, **k))
    return layer.eval()


@pytest.mark.parametrize("module", [_Pooled, _MaskedPooled])
def test_a_rollout_step_names_the_connections_of_a_module_of_another_dtype(module: Any) -> None:
    conns = [Connection("a", "b", t_src=0, t_dst=0, fn="t17_plug"), Connection("b", "a", t_src=0, t_dst=0, fn="t17_plug"),
             Connection("a", "a", t_src=0, t_dst=0, fn="other")]
    layer = _rollout_layer(module, conns, dtype=torch.float64)
    with incremental(layer, _layout()) as roll, pytest.raises(ShapeError) as info:
        roll.step(torch.randn(1, 4, 8))
    msg = str(info.value)
    assert msg.startswith("connections 'a' -> 'b', 'b' -> 'a' (fn 't17_plug'): attention type 't17_plug'"), msg
    assert "torch.float64" in msg and "'a' -> 'a'" not in msg


def test_a_rollout_step_names_the_connection_of_a_module_on_the_meta_device() -> None:
    layer = _rollout_layer(_Pooled, [Connection("a", "b", t_src=0, t_dst=0, fn="t17_plug")], device="meta")
    with incremental(layer, _layout()) as roll, pytest.raises(
            ShapeError, match=r"^connection 'a' -> 'b' \(fn 't17_plug'\): attention type .*meta device"):
        roll.step(torch.randn(1, 4, 8))


def test_canvas_engineering_layouts_compare_by_what_places_positions() -> None:
    ce = pytest.importorskip("canvas_engineering")
    spec = {name: ce.RegionSpec(bounds=bounds) for name, bounds in REGIONS.items()}
    theirs = ce.CanvasLayout(T=2, H=1, W=4, d_model=8, regions=spec)
    plan = _plan()  # lowered from canvas-core's layout
    x = torch.randn(1, 8, 8)
    assert torch.equal(_build(CanvasAttention, plan, theirs)(x), _build(CanvasAttention, plan, None)(x))
    moved = ce.CanvasLayout(T=2, H=1, W=4, d_model=8, regions={**spec, "b": ce.RegionSpec(bounds=(0, 2, 0, 1, 3, 4))})
    with pytest.raises(SchemaError, match=r"region 'b' bounds \(0, 2, 0, 1, 3, 4\) in the layout given"):
        CanvasAttention(plan, moved, n_heads=2)
