"""Review fixes (fx1) of the command line: a kernel's availability check that prints cannot corrupt
``--json``; digits inside a quoted name or a path are not shortened; the huge-number error skips
JSON strings; dpi has only a lower bound; the topology graph stays readable; multi-line plugin
errors keep their lines and the zero-width joiners stay."""

from __future__ import annotations

import json
import warnings
from typing import Any, List

import pytest

import canvas_core.plugins as P
from canvas_core.cli import abbreviate_numbers, main, printable
from canvas_core.errors import CanvasError, SchemaFormatError
from canvas_core.plugins import PluginHost, use_host


def _chatty_check(ctx: Any) -> List[str]:
    print("fx1 chatty availability check")
    return []


def _kernel(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("fx1: never built by these tests")


class _Dist:
    name, version = "canvas-plugin-fx1chatty", "0.1"


class _ChattyEntryPoint:
    name, value, dist = "fx1chatty", "fx1chatty", _Dist()

    def load(self) -> Any:
        import types

        mod = types.ModuleType("fx1chatty")
        mod.canvas_register_kernels = P.hookimpl(lambda registry: registry.add(
            "fx1_chatty_kernel", _kernel, supports=("cross_attention",), check=_chatty_check, priority=100))
        return mod


@pytest.mark.parametrize("argv", [["plugins", "--json"], ["compile", "--json"], ["plugins"], ["compile"]])
def test_a_kernel_check_that_prints_leaves_stdout_to_the_command(argv, capsys, tmp_path):
    src = tmp_path / "one.json"
    src.write_text('{"layout": {"T": 1, "spatial_shape": [2, 1], "d_model": 8}, '
                   '"regions": {"a": {"bounds": [0, 1, 0, 1, 0, 1]}}, "topology": [{"src": "a", "dst": "a"}]}')
    with warnings.catch_warnings(), use_host(PluginHost(entry_points=lambda: [_ChattyEntryPoint()])):
        warnings.simplefilter("ignore")
        assert main(argv + [str(src)] if argv[0] == "compile" else argv) == 0
    out, err = capsys.readouterr()
    assert "fx1 chatty availability check" not in out and "fx1 chatty availability check" in err
    if "--json" in argv:
        json.loads(out)  # nothing but the document


def test_digits_in_quoted_names_and_paths_stay_whole():
    long = "1234567890" * 3
    assert abbreviate_numbers(f"cannot use '/data/run_{long}.json': no such file") == \
        f"cannot use '/data/run_{long}.json': no such file"
    assert abbreviate_numbers(f'region "r{long}" and path /tmp/{long}/x and file f{long}.json') == \
        f'region "r{long}" and path /tmp/{long}/x and file f{long}.json'
    assert abbreviate_numbers(f"T={long}, got {long}.") == \
        "T=123456...7890 (30 digits), got 123456...7890 (30 digits)."
    assert abbreviate_numbers(f"it can't be {long} here") == "it can't be 123456...7890 (30 digits) here"


def test_a_missing_file_with_a_long_number_in_its_name_is_named_whole(tmp_path, capsys):
    path = tmp_path / ("run_" + "9" * 40 + ".json")
    assert main(["compile", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "(40 digits)" not in err


def test_the_huge_number_error_points_at_the_number_not_at_a_string_of_digits():
    from canvas_core.schema.jsonio import loads_strict

    text = '{"name": "' + "1" * 5000 + '", "q\\"": "x",\n "d_model": ' + "7" * 4500 + "}"
    with pytest.raises(SchemaFormatError) as ei:
        loads_strict(text, "schema file 'x.json'")
    assert "4,500 digits at line 2, column 13" in str(ei.value)


def test_dpi_has_a_lower_bound_only_the_width_cap_bounds_the_rest(tmp_path):
    pytest.importorskip("matplotlib")
    from canvas_core.commands.compile import load_schema
    from canvas_core.viz import check_picture_width, draw_schema

    assert check_picture_width(1, False, 3000, 65536) == round((2.2 + 1.5) * 3000)  # fits: not refused
    schema, _ = load_schema(None)
    for dpi in (5, 9.5, float("nan"), float("inf")):
        with pytest.raises(CanvasError, match="dpi must be a number > 0 and at least 10 dots per inch") as ei:
            draw_schema(schema, tmp_path / "d.png", dpi=dpi)
        assert "2400" not in str(ei.value)
    with pytest.raises(CanvasError, match="pixels wide, over the cap"):
        draw_schema(schema, tmp_path / "d.png", dpi=10 ** 6)
    assert not (tmp_path / "d.png").exists()


def test_the_topology_graph_of_61_regions_draws_few_enough_nodes_to_read():
    from canvas_core.viz import GRAPH_MAX_NODES, graph_sizes, graph_subset

    names = [f"sensor_region_{i}" for i in range(61)]
    nodes, _, note = graph_subset(names, [])
    assert len(nodes) == GRAPH_MAX_NODES <= 24 and note.startswith(f"{GRAPH_MAX_NODES} of 61 regions")
    assert graph_sizes(GRAPH_MAX_NODES)[0] < graph_sizes(8)[0] and graph_sizes(GRAPH_MAX_NODES)[1] <= graph_sizes(8)[1]


def test_frame_numbers_are_drawn_only_for_regions_the_legend_lists():
    from canvas_core.viz import RegionLabel, labels_shown

    labels = [RegionLabel(f"r{i}", i + 1, 0.0, float(i), inline=(i == 55)) for i in range(61)]
    shown = labels_shown(labels, 61)
    assert [lab.number for lab in shown if not lab.inline] == list(range(1, 48))  # the legend's 47 entries
    assert [lab.number for lab in shown if lab.inline] == [56]  # a name written in the cell needs no legend
    few = labels[:40]
    assert labels_shown(few, 40) == few


def test_plugin_errors_keep_their_lines_and_joiners_in_the_text_listing():
    from canvas_core.commands.plugins import _text

    class Dist:
        name, version = "canvas-plugin-fx1lines", "0.1"

    class EP:
        name, value, dist = "fx1lines", "fx1lines", Dist()

        def load(self) -> Any:
            raise RuntimeError("first line\nsecond line می\u200cخواهم 👨\u200d👩\x1b[2J")

    with warnings.catch_warnings(), use_host(PluginHost(entry_points=lambda: [EP()])):
        warnings.simplefilter("ignore")
        from canvas_core.commands.plugins import collect

        text = _text(collect())
    lines = text.split("\n")
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("error:") and "first line" in line)
    assert lines[at].endswith("first line") and lines[at + 1] == " " * 10 + "second line می\u200cخواهم 👨\u200d👩\\x1b[2J"
    assert "\\n" not in text and "\\u200c" not in text and "\\u200d" not in text
    assert printable("a\u200cb\u200dc\u202e") == "a\u200cb\u200dc\\u202e"
