"""Our docstrings and comments are our own: none repeats a line or sentence of canvas-engineering.

``scripts/check_prose.py`` does the comparison; here it runs against the installed
canvas-engineering 0.5.0, and on small made-up trees to show that it does catch a copy.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _checker():
    spec = importlib.util.spec_from_file_location("check_prose", ROOT / "scripts" / "check_prose.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_docstring_or_comment_repeats_canvas_engineering():
    pytest.importorskip("canvas_engineering", reason="canvas-engineering is not installed to compare against")
    check = _checker()
    theirs = check.installed_canvas_engineering()
    ours = [ROOT / d for d in check.DEFAULT_OURS if (ROOT / d).exists()]
    repeats = check.find_repeats(ours, [theirs], 50)
    listing = "\n".join(f"{Path(p).relative_to(ROOT)}:{n}: {t}" for (p, n), t in repeats)
    assert not repeats, "write these in our own words:\n" + listing


def test_checker_catches_copied_lines_and_rewrapped_sentences(tmp_path):
    check = _checker()
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    theirs.mkdir()
    ours.mkdir()
    (theirs / "a.py").write_text(
        '"""Module.\n\nThe scheduler decides which regions are updated at every single step.\n"""\n'
        "def f():\n"
        '    """Compute the weighted average of all the incoming messages for a region,\n'
        '    then normalise it by the total weight of the connections."""\n'
        "    # keep the original hidden states around so that the loop can restart later\n")
    (ours / "b.py").write_text(
        "def g():\n"
        '    """Short.\n\n    The scheduler decides which regions are updated at every single step.\n    """\n'
        "    x = 1  #   keep the original hidden states around so that the loop can restart later\n"
        "    # Compute the weighted average of all the incoming messages for a region, then\n"
        "    # normalise it by the total weight of the connections.\n"
        '    """not a docstring: a string statement in the middle of a body"""\n'
        "    # A comment that is ours alone and long enough to be compared with theirs.\n")
    found = {n: t for (_p, n), t in check.find_repeats([ours], [theirs], 50)}
    assert found[4] == "The scheduler decides which regions are updated at every single step."
    assert found[6].startswith("keep the original hidden states")  # a comment after code
    assert found[7].startswith("Compute the weighted average")  # same sentence, wrapped elsewhere
    assert len(found) == 3
    assert check.find_repeats([ours], [theirs], 200) == []
    # case, markup quotes and end punctuation do not hide a copy
    (theirs / "c.py").write_text('"""Identifier of the model that produced the semantic embedding."""\n')
    (ours / "d.py").write_text('"""identifier of the ``model`` that produced the *semantic embedding*"""\n')
    assert [n for (p, n), _t in check.find_repeats([ours / "d.py"], [theirs], 50)] == [1]
