"""Regressions found by the external audit of the program layer: compiled programs follow
canvas-engineering's region order (nested objects before lists) and coarse-region periods, and the
layout-strategy / temporal-fill enums name a misspelt value. (The schema layer's part of the audit is
tests/schema/test_audit_bad_input.py.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import pytest

import canvas_core as cc
from canvas_core.errors import ProgramError, SchemaError

F = cc.Field


def _tree(Fld):
    @dataclass
    class Leaf:
        x: Fld = Fld(2, 2, period=4)
        y: Fld = Fld(1, 2, period=1)

    @dataclass
    class Mid:
        a: Fld = Fld(1, 1, period=3)
        inner: Leaf = field(default_factory=Leaf)

    @dataclass
    class Root:
        items: List[Mid] = field(default_factory=lambda: [Mid(), Mid()])   # list declared first
        single: Leaf = field(default_factory=Leaf)
        top: Fld = Fld(1, 1)

    return Root()


def test_nested_objects_come_before_lists_and_coarse_period_is_the_weighted_mean():
    bound = cc.compile_schema(_tree(F), T=2)
    assert bound.field_names == [
        "top", "single", "single.x", "single.y",
        "items[0]", "items[0].a", "items[0].inner", "items[0].inner.x", "items[0].inner.y",
        "items[1]", "items[1].a", "items[1].inner", "items[1].inner.x", "items[1].inner.y",
    ]
    periods = {n: s.period for n, s in bound.layout.regions.items()}
    # Leaf: (4 * 4 + 1 * 2) / (4 + 2) = 3
    assert periods["single"] == 3 and periods["items[0].inner"] == 3
    # Mid: a (w 1, p 3), inner coarse (w 1, p 3), x (w 4, p 4), y (w 2, p 1): 3+3+16+2 / 8 = 3
    assert periods["items[0]"] == 3
    assert periods["top"] == 1


def test_explicit_coarse_period_is_kept():
    @dataclass
    class Leaf:
        x: F = F(2, 2, period=4)

    @dataclass
    class Root:
        leaf: Leaf = field(default_factory=Leaf, metadata={"coarse": F(1, 1, period=2)})
        top: F = F(1, 1)

    bound = cc.compile_schema(Root(), T=2)
    assert bound.layout.regions["leaf"].period == 2


def test_region_order_and_coarse_periods_match_canvas_engineering():
    ce = pytest.importorskip("canvas_engineering")
    b1 = cc.compile_schema(_tree(cc.Field), T=2, spatial_shape=(16, 16), layout_strategy="packed")
    b2 = ce.compile_schema(_tree(ce.Field), T=2, spatial_shape=(16, 16), layout_strategy="packed")
    assert b1.field_names == b2.field_names
    assert {n: s.period for n, s in b1.layout.regions.items()} == {
        n: b2.layout.region_spec(n).period for n in b2.field_names}
    assert {n: s.bounds for n, s in b1.layout.regions.items()} == {
        n: tuple(b2.layout.region_spec(n).bounds) for n in b2.field_names}
    c1 = [(c.src, c.dst) for c in b1.topology.connections]
    c2 = [(c.src, c.dst) for c in b2.topology.connections]
    assert c1 == c2


def test_layout_strategy_and_temporal_fill_values():
    assert cc.LayoutStrategy("PACKED") is cc.LayoutStrategy.PACKED
    assert cc.TemporalFill("Hold") is cc.TemporalFill.HOLD
    with pytest.raises(ProgramError, match="unknown layout_strategy 'fancy'"):
        cc.LayoutStrategy("fancy")
    with pytest.raises(SchemaError, match="Did you mean 'hold'"):
        cc.TemporalFill("hodl")
