"""Region names: zero width (non-)joiners inside words of scripts that need them (Persian, Sinhala,
Devanagari), subdivision flags and emoji ZWJ sequences ending in a math symbol are accepted; names
the NFKC look-alike key merges are refused together in one layout (``'x²'`` and ``'x2'``), each
alone is fine; checking a printable non-ASCII name reads no character categories (a dense
topology names each region many times)."""

from __future__ import annotations

import types
import unicodedata

import pytest

import canvas_core.schema._validate as validate
from canvas_core import CanvasLayout, Connection, CanvasTopology
from canvas_core.errors import RegionError, TopologyError

KEPT = ["\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian, ZWNJ inside the word
        "\u0dc1\u0dca\u200d\u0dbb\u0dd3",  # Sinhala, ZWJ after a virama
        "\u0915\u094d\u200d\u0937",  # Devanagari, ZWJ after a virama
        "\U0001f642\u200d\u2194\ufe0f",  # emoji ZWJ sequence ending in a math symbol (Sm)
        "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"]  # flag of Scotland
REFUSED = ["ca\u200cmera", "ca\u200dmera", "\u200c\u0645\u06cc", "\u0645\u06cc\u200c", "a\U000e0067\U000e007f",
           "\U0001f3f4\U000e007f", "\U0001f3f4\U000e0067"]


def _layout(*names: str) -> CanvasLayout:
    return CanvasLayout(T=1, d_model=4, spatial_shape=(len(names),),
                        regions={n: (0, 1, i, i + 1) for i, n in enumerate(names)})


@pytest.mark.parametrize("name", KEPT, ids=ascii)
def test_names_of_scripts_and_emoji_that_need_format_characters_are_kept(name):
    assert _layout(name).region_names == (name,)
    assert Connection(name, name).src == name


@pytest.mark.parametrize("name", REFUSED, ids=ascii)
def test_joiners_and_tags_out_of_place_are_still_refused(name):
    with pytest.raises(RegionError, match="invisible or control character"):
        _layout(name)
    with pytest.raises(TopologyError, match="invisible or control character"):
        Connection(name, "a")


@pytest.mark.parametrize("a, b", [("x\u00b2", "x2"), ("x\u2081", "x1"), ("\u00b5", "\u03bc"), ("\u03c6", "\u03d5"),
                                  ("\uff76", "\u30ab")], ids=ascii)
def test_names_the_nfkc_key_merges_are_refused_together_and_fine_alone(a, b):
    with pytest.raises(RegionError, match="rename one of them"):
        _layout(a, b)
    assert _layout(a).region_names == (a,)
    assert _layout(b).region_names == (b,)


@pytest.mark.parametrize("a, b", [("\u212a", "K"), ("caf\u00e9", "cafe\u0301")], ids=ascii)
def test_names_that_print_alike_are_still_refused(a, b):
    with pytest.raises(RegionError, match="look the same"):
        _layout(a, b)


def test_a_ligature_twin_is_refused_as_one_that_may_be_mistaken():
    with pytest.raises(RegionError, match=r"may be mistaken for each other \(equal after NFKC"):
        _layout("\ufb01eld", "field")


def test_a_printable_non_ascii_name_reads_no_character_category(monkeypatch):
    calls = []
    counting = types.SimpleNamespace(**{k: getattr(unicodedata, k) for k in dir(unicodedata) if not k.startswith("_")})
    counting.category = lambda c: calls.append(c) or unicodedata.category(c)
    monkeypatch.setattr(validate, "unicodedata", counting)
    names = [f"\u043a\u0430\u043c\u0435\u0440\u0430_{i}" for i in range(5)]
    CanvasTopology.dense(names)
    assert calls == []
