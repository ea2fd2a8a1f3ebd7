"""Region names after the fx4 review: the look-alike key is NFKC again (Roman numerals, ligature
letters, the non-breaking hyphen, the ellipsis), it leaves out zero width (non-)joiners between
letters of scripts that do not shape (tag characters are kept: see test_fx5_names_joiners), an
emoji ZWJ is followed only by an emoji or a non-ASCII symbol, and a subdivision flag holds 2 to 6
tag digits / lowercase letters."""

from __future__ import annotations

import pytest

from canvas_core import CanvasLayout, Connection
from canvas_core.errors import RegionError, TopologyError
from canvas_core.schema._validate import name_key

FLAG = "\U0001f3f4"
CANCEL = "\U000e007f"


def _tags(text: str) -> str:
    return "".join(chr(0xE0000 + ord(c)) for c in text)


def _layout(*names: str) -> CanvasLayout:
    return CanvasLayout(T=1, d_model=4, spatial_shape=(len(names),),
                        regions={n: (0, 1, i, i + 1) for i, n in enumerate(names)})


LOOKALIKES = [("\u2160", "I"), ("\u217c", "l"), ("\u216f", "M"), ("a\u2011b", "a\u2010b"), ("\u0132", "IJ"),
              ("\u01c8", "Lj"), ("a\u2026", "a..."), ("\u6771\u4eac", "\u6771\u200c\u4eac"),
              ("\u043f\u0440\u0438\u0432\u0435\u0442", "\u043f\u0440\u0438\u200d\u0432\u0435\u0442")]


@pytest.mark.parametrize("a, b", LOOKALIKES, ids=ascii)
def test_lookalikes_are_refused_together(a, b):
    assert name_key(a) == name_key(b)
    with pytest.raises(RegionError, match="look the same|may be mistaken for each other"):
        _layout(a, b)


@pytest.mark.parametrize("name", ["\U0001f642\u200d+", "\U0001f642\u200d=", "x\U0001f642\u200d<"], ids=ascii)
def test_emoji_joiner_before_an_ascii_symbol_is_refused(name):
    with pytest.raises(RegionError, match="invisible or control character"):
        _layout(name)


@pytest.mark.parametrize("name", ["\U0001f642\u200d\u2194\ufe0f", "\U0001f468\u200d\U0001f469"], ids=ascii)
def test_emoji_joiner_before_emoji_or_non_ascii_symbol_is_kept(name):
    assert _layout(name).region_names == (name,)


@pytest.mark.parametrize("spec", ["gbsct", "us", "usca", "gb0123", "ab1"])
def test_subdivision_flags_are_kept(spec):
    name = FLAG + _tags(spec) + CANCEL
    assert _layout(name).region_names == (name,)


@pytest.mark.parametrize("spec", ["g", "gbsctxx", "GBSCT", "gb sct", "gb-sct", "gb~"])
def test_malformed_subdivision_flags_are_refused(spec):
    name = FLAG + _tags(spec) + CANCEL
    with pytest.raises(RegionError, match="invisible or control character"):
        _layout(name)
    with pytest.raises(TopologyError, match="invisible or control character"):
        Connection(name, "a")
