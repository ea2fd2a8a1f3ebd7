"""A plan lowered before its topology or layout changed is refused by the functions that turn a
plan into masks (``attention_mask``, ``dense_weights`` / ``ExecutionPlan.to_dense``, ``block_mask``)
as the layers refuse it, instead of showing the old connections; a plan lowered from another
topology than the one given is refused too.  A plugin module refused for its dtype or device in
a layer names the connections that run its type."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from torch import nn

from canvas_core import AttentionDispatcher, CanvasAttention, CanvasLayout, CanvasTopology, Connection, RegionSpec
from canvas_core.compiler.lowering import lower
from canvas_core.compiler.masks import block_mask
from canvas_core.errors import CanvasError, SchemaError, ShapeError
from canvas_core.runtime.plan_tensors import attention_mask, dense_weights

REGIONS = {"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 0, 1, 2, 4)}


def _layout() -> CanvasLayout:
    return CanvasLayout(T=2, H=1, W=4, d_model=8, regions=dict(REGIONS))


def _topology() -> CanvasTopology:
    return CanvasTopology(connections=[Connection("a", "b"), Connection("b", "a")])


CHANGES = {
    "append": lambda conns: conns.append(Connection("a", "a")),
    "pop": lambda conns: conns.pop(),
    "replace": lambda conns: conns.__setitem__(0, Connection("b", "b")),
    "reorder": lambda conns: conns.reverse(),
}

CALLS = {
    "attention_mask": lambda top, lay, plan: attention_mask(top, lay, plan=plan),
    "attention_mask without topology": lambda top, lay, plan: attention_mask(None, None, plan=plan),
    "dense_weights": lambda top, lay, plan: dense_weights(plan),
    "ExecutionPlan.to_dense": lambda top, lay, plan: plan.to_dense(),
    "block_mask": lambda top, lay, plan: block_mask(top, lay, block_size=4, plan=plan),
    "block_mask without topology": lambda top, lay, plan: block_mask(None, None, block_size=4, plan=plan),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_plan_lowered_before_the_connections_changed_is_refused(call: str, change: str) -> None:
    layout, top = _layout(), _topology()
    plan = lower(top, layout)
    CHANGES[change](top.connections)
    with pytest.raises(SchemaError, match=r"before its connections were changed .*lower the plan again") as info:
        CALLS[call](top, layout, plan)
    assert isinstance(info.value, CanvasError) and "ExecutionPlan" in str(info.value)
    assert call.split()[0] in str(info.value)  # names the call that refused it


@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_plan_lowered_before_the_layout_changed_is_refused(call: str) -> None:
    layout, top = _layout(), _topology()
    plan = lower(top, layout)
    layout.regions["a"] = RegionSpec(bounds=(0, 2, 0, 1, 0, 1))  # region a shrinks: the plan's indices are stale
    with pytest.raises(SchemaError, match=r"CanvasLayout before it was changed"):
        CALLS[call](top, layout, plan)


def test_the_mask_of_a_fresh_plan_shows_the_changed_connections() -> None:
    layout, top = _layout(), _topology()
    old = lower(top, layout)
    before = attention_mask(top, layout, plan=old)
    top.connections.pop()  # only a -> b is left
    plan = lower(top, layout)
    mask = attention_mask(top, layout, plan=plan)
    assert torch.equal(mask, top.to_attention_mask(layout)) and torch.equal(plan.to_dense(), mask)
    assert int((mask > 0).sum()) == int((before > 0).sum()) // 2
    assert block_mask(top, layout, block_size=4, plan=plan).density == block_mask(top, layout, block_size=4).density


def test_connections_changed_and_changed_back_are_accepted_and_refusal_loses_nothing() -> None:
    layout, top = _layout(), _topology()
    plan = lower(top, layout)
    want = plan.to_dense()
    extra = Connection("a", "a")
    top.connections.append(extra)
    with pytest.raises(SchemaError):
        plan.to_dense()
    top.connections.remove(extra)  # as lowered again: the plan is current
    assert torch.equal(plan.to_dense(), want)
    assert torch.equal(attention_mask(top, layout, plan=plan), want)


@pytest.mark.parametrize("mask", [attention_mask, lambda t, lay, plan: block_mask(t, lay, 4, plan=plan)])
def test_a_plan_of_another_topology_is_refused_and_an_equal_copy_accepted(mask: Callable[..., Any]) -> None:
    layout, top = _layout(), _topology()
    plan = lower(top, layout)
    other = CanvasTopology(connections=[Connection("a", "b")])
    with pytest.raises(SchemaError, match=r"lowered from another CanvasTopology than the topology given"):
        mask(other, layout, plan=plan)
    with pytest.raises(SchemaError, match=r"the layout given is not the one the plan was lowered from "
                                          r"\(region\(s\) \['b'\] only in the plan's; region 'a' bounds"):
        mask(top, CanvasLayout(T=2, H=1, W=4, d_model=8, regions={"a": (0, 2, 0, 1, 0, 4)}), plan=plan)
    mask(_topology(), _layout(), plan=plan)  # equal copies describe the same plan


def test_a_plan_that_is_not_a_plan_is_refused_by_block_mask() -> None:
    with pytest.raises(CanvasError, match=r"plan must be an ExecutionPlan.*got str"):
        block_mask(None, None, block_size=4, plan="causal")


# --- a plugin module of another dtype / device names the connections of its type ---------------

class _Pooled(nn.Module):
    def __init__(self, d_model: int, n_heads: int = 4, dropout: float = 0.0, **kw: Any) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model, **kw)

    def forward(self, queries, keys, values):
        return self.proj(values.mean(1, keepdim=True).expand_as(queries).contiguous())


def _plugin_layer(cls: Any, conns: list, **kw: Any) -> nn.Module:
    top = CanvasTopology(connections=[Connection("b", "b")] + conns)
    return cls(top, _layout(), d_model=8, n_heads=2, attention_factory=lambda f, *a, **k: _Pooled(*a, **kw, **k))


@pytest.mark.parametrize("cls", [CanvasAttention, AttentionDispatcher])
def test_a_module_of_another_dtype_names_the_connections_of_its_type(cls: Any) -> None:
    conns = [Connection("a", "b", fn="t17_plug"), Connection("b", "a", fn="t17_plug"), Connection("a", "a", fn="other")]
    layer = _plugin_layer(cls, conns, dtype=torch.float64)
    with pytest.raises(ShapeError) as info:
        layer(torch.randn(2, 8, 8))
    msg = str(info.value)
    assert msg.startswith("connections 'a' -> 'b', 'b' -> 'a' (fn 't17_plug'): attention type 't17_plug'"), msg
    assert "torch.float64" in msg and "layer.to(torch.float32)" in msg  # the dtype message, kept whole
    assert "'a' -> 'a'" not in msg  # a connection of another type is not named


def test_a_module_on_the_meta_device_names_its_connection() -> None:
    layer = _plugin_layer(CanvasAttention, [Connection("a", "b", fn="t17_plug")], device="meta")
    with pytest.raises(ShapeError, match=r"^connection 'a' -> 'b' \(fn 't17_plug'\): attention type .*meta device"):
        layer(torch.randn(2, 8, 8))


def test_many_connections_of_one_type_are_named_up_to_three() -> None:
    layout = CanvasLayout(T=2, H=1, W=5, d_model=8, regions={r: (0, 2, 0, 1, i, i + 1) for i, r in enumerate("abcde")})
    conns = [Connection(s, "a", fn="t17_plug") for s in "bcde"]
    top = CanvasTopology(connections=[Connection("a", "a")] + conns)
    layer = CanvasAttention(top, layout, d_model=8, n_heads=2,
                            attention_factory=lambda f, *a, **k: _Pooled(*a, dtype=torch.float64, **k))
    with pytest.raises(ShapeError, match=r"^connections 'b' -> 'a', 'c' -> 'a', 'd' -> 'a' \(and 1 more\) "
                                         r"\(fn 't17_plug'\): attention type 't17_plug'"):
        layer(torch.randn(1, 10, 8))
