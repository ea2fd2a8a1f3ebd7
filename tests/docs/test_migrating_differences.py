"""docs/migrating.md lists the intended differences a migrating script can observe; each check here
pairs the page's sentence with the behaviour it describes, so neither drifts from the other."""

from __future__ import annotations

from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "migrating.md"


def _page_text() -> str:
    return " ".join(PAGE.read_text(encoding="utf-8").split())  # line breaks of the Markdown ignored


def test_enum_text_difference_is_listed_and_true():
    from canvas_core import LayoutStrategy, TemporalFill

    text = _page_text()
    assert "`str()` and f-strings of `TemporalFill` and `LayoutStrategy` members" in text
    assert '"TemporalFill.DROP"' in text and '"LayoutStrategy.PACKED"' in text
    assert str(TemporalFill.DROP) == f"{TemporalFill.DROP}" == "drop"
    assert str(LayoutStrategy.PACKED) == f"{LayoutStrategy.PACKED}" == "packed"
    assert LayoutStrategy.PACKED == "packed" and repr(TemporalFill.DROP) == "<TemporalFill.DROP: 'drop'>"


def test_enum_text_of_canvas_engineering_is_as_the_page_says():
    ce = pytest.importorskip("canvas_engineering")
    assert str(ce.TemporalFill.DROP) == "TemporalFill.DROP" and str(ce.LayoutStrategy.PACKED) == "LayoutStrategy.PACKED"
    assert repr(ce.TemporalFill.DROP) == "<TemporalFill.DROP: 'drop'>"


def test_attention_registry_difference_is_listed_and_true():
    import canvas_core

    text = _page_text()
    assert "**`ATTENTION_REGISTRY` and `ATTENTION_TYPES`** are live views" in text
    assert "`del ATTENTION_TYPES[name]` is refused" in text
    assert not isinstance(canvas_core.ATTENTION_REGISTRY, dict) and not isinstance(canvas_core.ATTENTION_TYPES, dict)
    entry = canvas_core.ATTENTION_REGISTRY["cross_attention"]
    assert entry is not entry.load() and entry.load().__name__ == entry.__name__ == "CrossAttention"


def test_file_error_difference_is_listed():
    text = _page_text()
    assert "**Schema and program files** (`from_json`, `from_dict`)" in text
    assert "`json.JSONDecodeError`" in text
