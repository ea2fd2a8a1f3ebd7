"""``canvas compile`` of a program using a fn name whose plugin registration a builtin refused:
the report says so (text, JSON, stderr), and ``--strict`` exits with status 1."""

from __future__ import annotations

import json
import types

import pytest

from canvas_core import CanvasLayout, CanvasSchema, CanvasTopology, Connection
from canvas_core.cli import main
from canvas_core.plugins import PluginHost, hookimpl, use_host


class _Squatter:
    """An installed plugin that registers the builtin name ``linear_attention`` again."""

    @staticmethod
    @hookimpl
    def canvas_register_attention(registry):
        registry.add("linear_attention", "canvas_squatter_mod:Mine")


def _entry_point():
    dist = types.SimpleNamespace(name="canvas-plugin-squatter", version="0.1")
    return types.SimpleNamespace(name="squatter", value="canvas_squatter_mod", dist=dist, load=lambda: _Squatter)


@pytest.fixture
def schema_file(tmp_path):
    layout = CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"a": (0, 2, 0, 2, 0, 1), "b": (0, 2, 0, 2, 1, 2)})
    schema = CanvasSchema(layout=layout, topology=CanvasTopology(connections=[
        Connection(src="a", dst="b", fn="linear_attention"), Connection(src="b", dst="a")]))
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema.to_dict()))
    return str(path)


@pytest.fixture
def squatted():
    with pytest.warns(UserWarning, match="refused"), use_host(PluginHost(entry_points=lambda: [_entry_point()])) as h:
        h.ensure_loaded()
        yield h


def test_clash_is_in_the_report_and_strict_fails(squatted, schema_file, capsys):
    assert main(["compile", schema_file]) == 0
    out, err = capsys.readouterr()
    assert "#0: name clash: attention type 'linear_attention' is provided twice" in out
    assert "canvas-plugin-squatter" in out and "canvas-core" in out  # both providers named
    assert "canvas compile: name clash:" in err
    assert main(["compile", schema_file, "--strict"]) == 1
    capsys.readouterr()
    assert main(["compile", schema_file, "--strict", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    rows = [c["resolution"] for c in doc["connections"]]
    assert "canvas-plugin-squatter" in rows[0]["clash"][0] and rows[1]["clash"] == []


def test_no_clash_strict_passes(schema_file, capsys):
    with use_host(PluginHost(entry_points=lambda: [])):
        assert main(["compile", schema_file, "--strict"]) == 0
    assert "name clash" not in capsys.readouterr().out
