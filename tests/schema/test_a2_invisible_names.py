"""Region and field names that would print like another name (control and format characters,
odd spaces, letters that draw nothing, spaces at either end, look-alike twins) are refused wherever a
name enters: a layout, a connection, a topology constructor, a program's attribute, a JSON file."""

from __future__ import annotations

import json

import pytest

from canvas_core import CanvasLayout, CanvasSchema, CanvasTopology, Connection, Field, compile_program
from canvas_core.errors import CanvasTypeError, ProgramError, RegionError, SchemaFormatError, TopologyError

HIDDEN = ["a\u200bb", "a\u200cb", "a\u200db", "\ufeffa", "a\u2060", "a\u202eb", "a\u2066b", "a\x00", "a\x7f",
          "a\tb", "a\nb", "a\u00a0b", "a\u3000b", "a\u2028b", "a\u00adb", "\u3164", "a\u115fb"]


def _layout(*names: str) -> CanvasLayout:
    return CanvasLayout(T=1, d_model=4, spatial_shape=(max(1, len(names)),),
                        regions={n: (0, 1, i, i + 1) for i, n in enumerate(names)})


@pytest.mark.parametrize("name", HIDDEN, ids=ascii)
def test_a_layout_refuses_a_name_holding_an_invisible_character(name):
    with pytest.raises(RegionError, match="holds the invisible or control character") as info:
        _layout(name)
    assert repr(name) in str(info.value) and "remove it" in str(info.value)


@pytest.mark.parametrize("name", HIDDEN, ids=ascii)
def test_a_connection_and_the_topology_constructors_refuse_it(name):
    with pytest.raises(TopologyError, match=r"Connection\(.*\): src .* holds the invisible"):
        Connection(name, "b")
    with pytest.raises(TopologyError, match=r"dst .* holds the invisible"):
        Connection("b", name)
    for build in (CanvasTopology.causal_chain, CanvasTopology.isolated, CanvasTopology.dense):
        with pytest.raises(TopologyError, match="region name .* holds the invisible"):
            build(["b", name])


def test_a_program_attribute_and_a_json_file_refuse_it():
    class Robot:
        def __init__(self) -> None:
            self.arm = Field(1, 1)
            setattr(self, "arm\u200b", Field(1, 1))  # prints as a second 'arm'

    with pytest.raises(ProgramError, match=r"Robot: attribute name 'arm\\u200b' holds the invisible"):
        compile_program(Robot(), T=1)
    doc = {"layout": {"T": 1, "spatial_shape": [2], "d_model": 4},
           "regions": {"a": {"bounds": [0, 1, 0, 1]}, "a\u2060": {"bounds": [0, 1, 1, 2]}}}
    with pytest.raises(SchemaFormatError, match=r"'a\\u2060' holds the invisible"):
        CanvasSchema.from_json(json.dumps(doc))


@pytest.mark.parametrize("name", [" a", "a ", "  a b "])
def test_spaces_at_either_end_are_refused(name):
    with pytest.raises(RegionError, match="starts or ends with a space"):
        _layout(name)


def test_a_blank_or_non_string_name_is_still_refused():
    with pytest.raises(RegionError, match="must be a non-empty string"):
        _layout("  ")
    with pytest.raises(CanvasTypeError, match=r"must be a non-empty string, got 3 \(int\)"):
        CanvasLayout(T=1, d_model=4, spatial_shape=(1,), regions={3: (0, 1, 0, 1)})


@pytest.mark.parametrize("a, b", [("\ufb01eld", "field"), ("\u212a", "K"), ("caf\u00e9", "cafe\u0301"),
                                  ("\uff41", "a"), ("\u2764\ufe0f", "\u2764"), ("\u0441\u0430mera", "camera"),
                                  ("\u0391\u0392", "AB")], ids=ascii)
def test_two_names_that_print_alike_are_refused_in_one_layout(a, b):
    with pytest.raises(RegionError, match=r"(look the same|may be mistaken for each other \(equal after NFKC "
                                          r"compatibility normalization\)) but are spelt with other Unicode code points"):
        _layout(a, b)


def test_a_look_alike_twin_looked_up_is_named():
    with pytest.raises(TopologyError, match=r"region '\ufb01eld' (looks the same|may be mistaken for it)"):
        CanvasSchema(_layout("\ufb01eld"), CanvasTopology([Connection("field", "field")]))


VISIBLE = ["caf\u00e9", "\u30ab\u30e1\u30e9", "m\u00b2", "\u2764\ufe0f", "\U0001f916.arm[0]", "a b", "\u05e9\u05dc\u05d5\u05dd",
           "\u0928\u092e\u0938\u094d\u0924\u0947", "\U0001f468\u200d\U0001f469", "\u2764\ufe0f\u200d\U0001f525",
           "Camera", "camera", "\u043a\u0430\u043c\u0435\u0440\u0430", "\u03b1_max", "firm_AAPL.financials.revenue"]


def test_visible_names_of_any_script_are_kept_and_round_trip():
    layout = _layout(*VISIBLE)  # 'Camera' and 'camera' print differently: two regions
    assert layout.region_names == tuple(VISIBLE)
    schema = CanvasSchema(layout, CanvasTopology.causal_chain(VISIBLE))
    assert CanvasSchema.from_json(schema.to_json()) == schema
