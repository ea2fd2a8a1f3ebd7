"""Region names after the fx5 review: the look-alike key keeps tag characters and the zero width
(non-)joiners that change what is drawn (emoji sequences, Persian, Indic), so such names no longer
collide; a joiner between two letters of scripts that do not shape is still left out.  A pair
equal only after NFKC is said to be possibly mistaken, not to look the same.  A joiner right after
a virama (a Malayalam chillu at the end of a word) is accepted."""

from __future__ import annotations

import pytest

from canvas_core import CanvasLayout, Connection
from canvas_core.errors import RegionError, UnknownRegionError
from canvas_core.schema._validate import name_key

FLAG = "\U0001f3f4"
CANCEL = "\U000e007f"


def _flag(spec: str) -> str:
    return FLAG + "".join(chr(0xE0000 + ord(c)) for c in spec) + CANCEL


def _layout(*names: str) -> CanvasLayout:
    return CanvasLayout(T=1, d_model=4, spatial_shape=(len(names),),
                        regions={n: (0, 1, i, i + 1) for i, n in enumerate(names)})


DISTINCT = [(_flag("gbeng"), _flag("gbsct")), ("team_" + _flag("gbeng"), "team_" + _flag("gbwls")),
            (_flag("gbeng"), FLAG),
            ("\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f468\U0001f469\U0001f467"),
            ("\U0001f3f3\ufe0f\u200d\U0001f308", "\U0001f3f3\U0001f308"),
            ("\U0001f43b\u200d\u2744\ufe0f", "\U0001f43b\u2744")]


@pytest.mark.parametrize("a, b", DISTINCT, ids=ascii)
def test_names_that_print_differently_may_share_a_layout(a, b):
    assert name_key(a) != name_key(b)
    assert _layout(a, b).region_names == (a, b)


SAME = [("\u6771\u4eac", "\u6771\u200c\u4eac"), ("\u043f\u0440\u0438\u0432\u0435\u0442", "\u043f\u0440\u0438\u200d\u0432\u0435\u0442"),
        ("\u00e9\u00e9", "\u00e9\u200d\u00e9"), ("e\u0301\u00e9", "e\u0301\u200c\u00e9"),
        ("\u0436\u00e9", "\u0436\u200d\u00e9"), ("\u30ab\u30e1\u30e9", "\u30ab\u200c\u30e1\u30e9"),
        ("\u2764\ufe0f", "\u2764"),
        # joiners of text are left out everywhere: where one shapes (Persian, Sinhala, Malayalam)
        # the pair prints a little differently, where it does not (Hebrew, Thai, Arabic alef, a
        # fullwidth or halfwidth name) exactly alike; refusing either costs a rename
        ("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "\u0645\u06cc\u062e\u0648\u0627\u0647\u0645"),
        ("\u0dc1\u0dca\u200d\u0dbb\u0dd3", "\u0dc1\u0dca\u0dbb\u0dd3"),
        ("\u0d30\u0d3e\u0d2e\u0d28\u0d4d\u200d", "\u0d30\u0d3e\u0d2e\u0d28\u0d4d"),
        ("\u05dc\u200c\u05e9\u05d5\u05df", "\u05dc\u05e9\u05d5\u05df"), ("\u0e01\u200d\u0e25", "\u0e01\u0e25"),
        ("\u0627\u200c\u0628", "\u0627\u0628"), ("\u30e9\u30fc\u200c\u30e1\u30f3", "\u30e9\u30fc\u30e1\u30f3"),
        # a Cyrillic letter under a mark meets its Latin twin
        ("\u0435\u0301", "\u00e9"), ("\u0451", "\u00eb")]


@pytest.mark.parametrize("a, b", SAME, ids=ascii)
def test_a_joiner_of_text_still_makes_a_look_alike(a, b):
    assert name_key(a) == name_key(b)
    with pytest.raises(RegionError, match=r"(look the same|may be mistaken for each other).* but are spelt with "
                                          r"other Unicode code points"):
        _layout(a, b)


@pytest.mark.parametrize("a, b", [("x2", "x\u00b2"), ("\ufb01eld", "field"), ("\u2160", "I"), ("\uff41", "a")],
                         ids=ascii)
def test_an_nfkc_only_pair_is_said_to_be_mistakable_not_alike(a, b):
    with pytest.raises(RegionError, match=r"may be mistaken for each other \(equal after NFKC compatibility "
                                          r"normalization\) but are spelt") as err:
        _layout(a, b)
    assert "look the same" not in str(err.value)
    with pytest.raises(UnknownRegionError, match=r"may be mistaken for it \(equal after NFKC") as err:
        _layout(a).region_spec(b)
    assert "looks the same" not in str(err.value)


@pytest.mark.parametrize("name", ["\u0d30\u0d3e\u0d2e\u0d28\u0d4d\u200d", "\u0d05\u0d35\u0d7b\u0d4d\u200c",
                                  "\u0915\u094d\u200d"], ids=ascii)
def test_a_joiner_after_a_virama_is_accepted(name):
    assert _layout(name).region_names == (name,)
    assert Connection(name, name).src == name


@pytest.mark.parametrize("name", ["\u0d28\u200d", "x\u094d\u200d_x", "\u094d\u200d", "\u0915\u200d"], ids=ascii)
def test_a_joiner_after_a_letter_at_the_end_is_still_refused(name):
    with pytest.raises(RegionError, match="invisible or control character"):
        _layout(name)
