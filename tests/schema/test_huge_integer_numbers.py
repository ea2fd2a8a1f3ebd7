"""Integers past the largest float are refused as numbers that are not finite, with a SchemaError,
not Python's OverflowError (and without printing thousands of digits)."""

from __future__ import annotations

import pytest

import canvas_core as cc
from canvas_core.errors import SchemaError
from canvas_core.schema._validate import as_float


@pytest.mark.parametrize("value, digits", [(10**400, 400), (-(10**400), 400), (10**6000, 6000)], ids=["1e400", "-1e400", "1e6000"])
def test_an_integer_past_the_largest_float_is_not_finite(value, digits) -> None:
    with pytest.raises(SchemaError, match=rf"x must be finite, got an integer of about {digits} digits") as info:
        as_float(value, "x")
    assert len(str(info.value)) < 200


def test_a_connection_weight_of_10_to_the_400_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match=r"weight must be finite.*past the largest float"):
        cc.Connection("a", "b", weight=10**400)
