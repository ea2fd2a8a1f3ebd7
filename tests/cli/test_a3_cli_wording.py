"""Wording of ``canvas`` errors a JSON file's author meets: JSON type names (null, array, ...),
numbers of hundreds of digits abbreviated, an over-long integer named as too large (not Python's
``sys.set_int_max_str_digits`` advice); ``draw_schema``'s dpi range and its capped topology graph."""

from __future__ import annotations

import json

import pytest

from canvas_core.cli import main
from canvas_core.errors import CanvasError, SchemaFormatError
from canvas_core.schema.jsonio import loads_strict


@pytest.mark.parametrize("text, name", [("null", "null"), ("[1, 2]", "array"), ('"abc"', "string"),
                                        ("5", "number"), ("1.5", "number"), ("true", "boolean")])
def test_a_file_that_is_no_json_object_is_named_with_json_words(tmp_path, capsys, text, name):
    src = tmp_path / "s.json"
    src.write_text(text)
    assert main(["compile", str(src)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.rstrip().endswith(f"a canvas schema must be a JSON object {{\"layout\": "
                                                          f"..., \"regions\": ...}} (a program too), got {name}")
    assert "NoneType" not in err and "list" not in err
    from canvas_core.schema.jsonio import json_type_name

    assert json_type_name(json.loads(text)) == name


def test_an_integer_too_long_for_python_is_called_too_large_with_its_place(tmp_path, capsys):
    text = '{"layout": {"T": 1,\n  "d_model": ' + "7" * 5000 + "}}"
    with pytest.raises(SchemaFormatError) as ei:
        loads_strict(text, "schema file 'x.json'")
    msg = str(ei.value)
    assert "5,000 digits at line 2, column 14" in msg and "too large" in msg
    assert "set_int_max_str_digits" not in msg
    src = tmp_path / "huge.json"
    src.write_text(text)
    assert main(["draw", str(src), "-o", str(tmp_path / "h.png")]) == 2
    err = capsys.readouterr().err
    assert "5,000 digits" in err and "set_int_max_str_digits" not in err


def test_numbers_of_hundreds_of_digits_are_abbreviated_on_the_command_line(tmp_path, capsys):
    big = "9" * 300
    src = tmp_path / "big.json"
    src.write_text('{"layout": {"T": %s, "spatial_shape": [4, 4], "d_model": 8}, '
                   '"regions": {"a": {"bounds": [0, 1, 0, 1, 0, 1]}}}' % big)
    assert main(["compile", str(src)]) == 2
    err = capsys.readouterr().err
    assert big[:40] not in err and "999999...9999 (300 digits)" in err and len(err) < 600
    assert "16,777,216" in err  # ordinary numbers stay as they are
    from canvas_core.cli import abbreviate_numbers

    assert abbreviate_numbers(format(10 ** 40, ",")) == "100000...0000 (41 digits)"
    assert abbreviate_numbers("bounds [0,1,2,3,4,5,6,7,8,9,0,1,2,3,4,5,6,7,8,9,0,1,2,3,4,5,6]").endswith("6]")


@pytest.mark.parametrize("dpi", [5, 9.5, 0])
def test_draw_schema_refuses_a_dpi_freetype_cannot_render(tmp_path, dpi):
    pytest.importorskip("matplotlib")
    from canvas_core.commands.compile import load_schema
    from canvas_core.viz import draw_schema

    schema, _ = load_schema(None)
    with pytest.raises(CanvasError, match=r"dpi must be a number > 0 and at least 10 dots per inch") as ei:
        draw_schema(schema, tmp_path / "d.png", dpi=dpi)
    assert "ppem" not in str(ei.value) and not (tmp_path / "d.png").exists()


def test_the_topology_graph_draws_the_most_connected_regions_and_says_so():
    from canvas_core.schema import CanvasLayout, CanvasTopology, Connection, RegionSpec
    from canvas_core.viz import GRAPH_MAX_NODES, graph_subset, topology_arrows

    n = 500
    layout = CanvasLayout(T=1, H=n, W=1, d_model=8,
                          regions={f"r{i}": RegionSpec(bounds=(0, 1, i, i + 1, 0, 1)) for i in range(n)})
    conns = [Connection(src=f"r{i}", dst=f"r{i + 1}") for i in range(n - 1)]
    conns += [Connection(src="r400", dst=f"r{i}") for i in range(0, 300, 5)]  # r400: the hub
    topo = CanvasTopology(connections=conns)
    arrows = topology_arrows(topo, layout)
    nodes, kept, note = graph_subset(list(layout.region_names), arrows)
    assert len(nodes) == GRAPH_MAX_NODES and "r400" in nodes
    assert all(a.src in nodes and a.dst in nodes for a in kept) and len(kept) < len(arrows)
    assert note == f"{GRAPH_MAX_NODES} of 500 regions (the most connected), {len(kept)} of {len(arrows)} arrows"
    assert nodes == sorted(nodes, key=lambda s: int(s[1:]))  # drawn in region order
    few = list(layout.region_names)[:10]
    assert graph_subset(few, arrows[:3]) == (few, arrows[:3], "")


def test_a_frame_of_thousands_of_regions_labels_the_named_and_listed_ones_only():
    from canvas_core.viz import FRAME_LABELS_MAX, RegionLabel, labels_shown

    labels = [RegionLabel(f"r{i}", i + 1, 0.0, float(i), inline=(i % 500 == 0)) for i in range(3000)]
    shown = labels_shown(labels, 3000)
    assert len(shown) <= FRAME_LABELS_MAX
    assert [lab.number for lab in shown if not lab.inline] == [n for n in range(2, 48)]  # the legend's numbers
    assert {lab.number for lab in shown if lab.inline} == {1, 501, 1001, 1501, 2001, 2501}
    assert labels_shown(labels[:40], 40) == labels[:40]  # a legend listing every region: all numbered
