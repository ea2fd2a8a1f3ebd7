"""t16: one canvas layer (``canvas verify`` without --layers, ``verify_structure(layer)``) counts a
connection that links nothing as a dead link; a type whose gate starts closed keeps its note."""

from __future__ import annotations

import json
import warnings

from canvas_core.cli import main
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection


def _schema(extra=()) -> CanvasSchema:
    lay = CanvasLayout(T=4, spatial_shape=(2,), d_model=8, regions={"a": (0, 2, 0, 2), "b": (2, 4, 0, 2)})
    conns = [Connection("a", "b", t_src=0, t_dst=0, temporal_fill="drop"), *extra]
    return CanvasSchema(layout=lay, topology=CanvasTopology(connections=conns))


def test_one_layer_cli_fails_it(tmp_path, capsys):
    """Was exit 0, 'every declared link carries signal' and a note 'not counted as dead links'."""
    path = tmp_path / "unlinked.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path.write_text(json.dumps(_schema().to_dict()))
    assert main(["verify", str(path), "--probes", "1", "--require-signal"]) == 1
    out = capsys.readouterr().out
    assert "every declared link carries signal" not in out and "not counted as dead links" not in out
    assert "connection #0 'a' -> 'b'" in out and "link no (query, key) pair on this layout" in out
