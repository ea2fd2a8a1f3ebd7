"""t16 command-line fixes: ``canvas verify --require-signal`` fails a connection that links
nothing; ``canvas embed -o`` refuses an unwritable output before embedding; ``printable`` escapes
a long report in linear time with the same output as before."""

from __future__ import annotations

import json
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_core.cli import main, printable
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection


# --- verify: a connection that links nothing -------------------------------------------------------
def _unlinked_schema() -> CanvasSchema:
    """Regions a (frames 0-1) and b (frames 2-3); a -> b at the same frame with ``drop`` pairs no frame."""
    lay = CanvasLayout(T=4, spatial_shape=(2,), d_model=8, regions={"a": (0, 2, 0, 2), "b": (2, 4, 0, 2)})
    topo = CanvasTopology(connections=[Connection("a", "b", t_src=0, t_dst=0, temporal_fill="drop")])
    return CanvasSchema(layout=lay, topology=topo)


@pytest.fixture
def unlinked_file(tmp_path):
    path = tmp_path / "unlinked.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path.write_text(json.dumps(_unlinked_schema().to_dict()))
    return path


def test_require_signal_fails_a_connection_linking_nothing(unlinked_file, capsys):
    """Was exit 0 with 'every declared link carries signal' (the connection was skipped as
    linking no probed pair)."""
    assert main(["verify", str(unlinked_file), "--layers", "2", "--probes", "1", "--require-signal"]) == 1
    out = capsys.readouterr().out
    assert "structure verification FAILED" in out
    assert "every declared link carries signal" not in out
    assert "connection #0 'a' -> 'b'" in out and "link no (query, key) pair on this layout" in out


def test_without_require_signal_it_is_reported_not_failed(unlinked_file, capsys):
    assert main(["verify", str(unlinked_file), "--layers", "2", "--probes", "1"]) == 0
    out = capsys.readouterr().out
    assert "not a failure without require_signal" in out and "link no (query, key) pair" in out
    assert "every declared link carries signal" not in out


def test_the_python_api_agrees(unlinked_file):
    import torch
    from torch import nn

    from canvas_core import verify_structure
    from canvas_core.compiler.lowering import lower
    from canvas_core.runtime.canvas_attention import CanvasAttention

    schema = _unlinked_schema()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = lower(schema.topology, schema.layout)
    torch.manual_seed(0)
    model = nn.Sequential(*(CanvasAttention(plan, d_model=8, n_heads=2) for _ in range(2)))
    strict = verify_structure(model, probes=1, require_signal=True)
    assert not strict.ok
    (dead,) = strict.dead
    assert (dead.connection, dead.whole, dead.checked_cells, dead.frames) == (0, True, 0, ())
    assert strict.to_dict()["dead"][0]["checked_cells"] == 0
    assert verify_structure(model, probes=1).ok  # reported, not a failure by default


def test_one_layer_fails_it_next_to_a_linked_connection_of_its_type():
    """One canvas layer whose attention group also has a linked connection: the one linking
    nothing is a dead link (was skipped: 'links no probed pair')."""
    import torch

    from canvas_core import verify_structure
    from canvas_core.compiler.lowering import lower
    from canvas_core.runtime.canvas_attention import CanvasAttention

    schema = _unlinked_schema()
    schema = CanvasSchema(layout=schema.layout, topology=CanvasTopology(
        connections=[*schema.topology.connections, Connection("b", "b", t_src=0, t_dst=0)]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = lower(schema.topology, schema.layout)
    torch.manual_seed(0)
    report = verify_structure(CanvasAttention(plan, d_model=8, n_heads=2), probes=1, require_signal=True)
    assert not report.ok
    assert [(d.connection, d.whole, d.checked_cells) for d in report.dead] == [(0, True, 0)]


def test_summary_line_defers_to_the_notes():
    """A note (e.g. a type whose gate starts closed, its links unmeasured) qualifies the line that
    says every declared link carries signal."""
    from canvas_core.runtime.verify_report import StructureReport

    assert "every declared link carries signal\n" in str(StructureReport(ok=True)) + "\n"
    noted = str(StructureReport(ok=True, notes=["layer: fn 'x' outputs 0 whatever its input"]))
    assert "every declared link carries signal (apart from what the notes below say)" in noted


# --- embed: the output is checked first ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["missing folder", "read-only file"])
def test_embed_refuses_the_output_before_embedding(tmp_path, monkeypatch, capsys, kind):
    import canvas_core.semantic as semantic

    calls = []
    monkeypatch.setattr(semantic, "embed_schema", lambda *a, **k: calls.append(a) or pytest.fail("embedded"))
    src = tmp_path / "s.json"
    src.write_text(json.dumps(CanvasSchema(layout=CanvasLayout(T=1, spatial_shape=(1,), d_model=8,
                                                               regions={"a": (0, 1, 0, 1)})).to_dict()))
    out = tmp_path / "nodir" / "x.json"
    if kind == "read-only file":
        out = tmp_path / "x.json"
        out.write_text("{}")
        out.chmod(0o444)
    assert main(["embed", str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert calls == []
    assert err.startswith("canvas embed: error: cannot write the canvas schema to ")
    assert ("does not exist; create it first" if kind == "missing folder" else "read-only") in err


# --- printable: linear, same output ----------------------------------------------------------------
def _old_printable(text: str, keep: str = "\n") -> str:
    """``printable`` as it was: one Python step per character whenever the text is not printable."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep or c in "\u200c\u200d" else ascii(c)[1:-1] for c in text)


_CHARS = st.one_of(
    st.sampled_from(list("\n\t\r\x1b\x00\x7f\x85\u2028\u202e\u200c\u200d\ud800\udfff\ufeff aé字🙂")),
    st.characters(),
)


@settings(max_examples=400, deadline=None)
@given(text=st.text(_CHARS, max_size=60), keep=st.sampled_from(["\n", "", "\n\t", "\t", "]\\-^"]))
def test_printable_matches_the_old_escaping(text, keep):
    assert printable(text, keep) == _old_printable(text, keep)


class _NoWalk(str):
    """A text that may not be walked one character at a time."""

    def __iter__(self):
        raise AssertionError("the whole text was escaped one character at a time")


def test_a_long_report_is_not_walked_character_by_character():
    """Was a per-character join over the whole report whenever it held a newline (13 s of a 47 s
    compile of 200,000 connections)."""
    lines = [f"  connection #{i} 'r{i}' -> 's{i}': 4 rectangles" for i in range(2000)]
    report = "\n".join(lines)
    assert printable(_NoWalk(report)) == report
    bad = "\n".join(lines + ["name \x1b[2J\tend"])  # only the line holding the escape is walked
    assert printable(_NoWalk(bad)) == report + "\nname \\x1b[2J\\tend"
    assert printable(_NoWalk(bad), keep="\n\t") == report + "\nname \\x1b[2J\tend"
