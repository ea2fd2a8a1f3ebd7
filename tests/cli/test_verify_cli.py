"""`canvas verify`: exit 0 when the structure verifies, 1 when it does not, 2 with one line for
bad arguments or files; --json prints the report."""

from __future__ import annotations

import json

import pytest

from canvas_core.cli import main
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection


@pytest.fixture
def schema_file(tmp_path):
    lay = CanvasLayout(T=3, spatial_shape=(2,), d_model=8, regions={"obs": (0, 3, 0, 1), "act": (0, 3, 1, 2)})
    topo = CanvasTopology(connections=[Connection("act", "obs", t_src=0, t_dst=0), Connection("act", "act", t_src=0, t_dst=-1),
                                       Connection("obs", "obs", t_src=0, t_dst=-1, fn="pooling")])
    path = tmp_path / "robot.json"
    path.write_text(json.dumps(CanvasSchema(layout=lay, topology=topo).to_dict()))
    return path


def test_verify_a_schema_file(schema_file, capsys):
    assert main(["verify", str(schema_file), "--layers", "2"]) == 0
    out = capsys.readouterr().out
    assert "structure verified: OK" in out and "2-hop closure" in out and "robot.json" in out


def test_stacked_layers_narrower_than_the_schema(tmp_path, capsys):
    """--layers 2 on a schema wider than the probed layers (d_model 64 > the default width cap of
    32): the stack is fed inputs of the layers' width, not the schema's (was exit 2, 'expects x
    of shape (B, N, 32) ... got (1, N, 64)', e.g. on the bundled example)."""
    lay = CanvasLayout(T=2, spatial_shape=(2,), d_model=64, regions={"obs": (0, 2, 0, 1), "act": (0, 2, 1, 2)})
    topo = CanvasTopology(connections=[Connection("act", "obs", t_src=0, t_dst=0), Connection("obs", "obs", t_src=0, t_dst=-1)])
    path = tmp_path / "wide.json"
    path.write_text(json.dumps(CanvasSchema(layout=lay, topology=topo).to_dict()))
    assert main(["verify", str(path), "--layers", "2", "--probes", "1"]) == 0
    assert "2 layer(s) of width 32" in capsys.readouterr().out


def test_verify_json(schema_file, capsys):
    assert main(["verify", str(schema_file), "--json", "--probes", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["exact"] is True and data["undeclared"] == [] and data["layers"] == 1


def test_verify_the_bundled_example_sampled(capsys):
    assert main(["verify", "--max-exact", "0", "--samples", "8", "--probes", "1", "--width", "8"]) == 0
    assert "sampled" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--layers", "0"], ["--layers", "257"], ["--layers", "100000000"], ["--samples", "x"], ["missing.json"], ["--width", "6", "--heads", "4"]])
def test_bad_arguments_exit_2_with_one_line(argv, capsys):
    try:
        rc = main(["verify", *argv])
    except SystemExit as exc:  # argparse's own refusals
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("canvas verify") and "\n" not in err


def test_require_signal_fails_on_a_dead_declared_connection(tmp_path, capsys):
    lay = CanvasLayout(T=4, spatial_shape=(2, 2), d_model=16, regions={"a": (0, 4, 0, 1, 0, 2), "b": (0, 4, 1, 2, 0, 2)})
    topo = CanvasTopology(connections=[Connection(x, y, t_src=0, t_dst=dt, fn="copy")
                                       for x in "ab" for y in "ab" for dt in (0, -1)])
    path = tmp_path / "copy.json"
    path.write_text(json.dumps(CanvasSchema(layout=lay, topology=topo).to_dict()))
    assert main(["verify", str(path), "--probes", "1"]) == 0
    assert "carries no signal" in capsys.readouterr().out
    assert main(["verify", str(path), "--probes", "1", "--require-signal"]) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.parametrize("option, minimum, wanted", [("--probes", 1, "a positive integer"),
                                                     ("--samples", 1, "a positive integer"),
                                                     ("--max-exact", 0, "an integer >= 0"),
                                                     ("--seed", 0, "an integer >= 0")])
@pytest.mark.parametrize("text", ["-3", "-1", "0", "1", "7", "x", "1.5", ""])
def test_integer_options_share_one_parser(option, minimum, wanted, text, capsys):
    """The count options read integers through one parser (``_int_at_least``), each with its
    floor: a value below it or not an integer is refused naming what was expected."""
    from canvas_core.commands.verify import _int_at_least, _nonneg, _positive

    parse = {1: _positive, 0: _nonneg}[minimum]
    ok = text.lstrip("-").isdigit() and int(text) >= minimum
    if ok:
        assert parse(text) == _int_at_least(minimum, wanted)(text) == int(text)
        return
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match=f"^expected {wanted}, got "):
        parse(text)
    with pytest.raises(SystemExit):
        main(["verify", option, text])
    assert f"expected {wanted}, got" in capsys.readouterr().err


def test_layer_count_is_capped(capsys):
    """A stack deeper than MAX_VERIFY_LAYERS is refused before any layer is built (100,000,000
    layers used to be built one by one: a hang)."""
    from canvas_core.commands.verify import MAX_VERIFY_LAYERS, _layer_count

    assert _layer_count(str(MAX_VERIFY_LAYERS)) == MAX_VERIFY_LAYERS
    with pytest.raises(SystemExit):
        main(["verify", "--layers", str(MAX_VERIFY_LAYERS + 1)])
    assert f"expected a layer count from 1 to {MAX_VERIFY_LAYERS}, got {MAX_VERIFY_LAYERS + 1}" in capsys.readouterr().err
