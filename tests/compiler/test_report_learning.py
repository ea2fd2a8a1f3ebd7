"""Issue 23 item 3 at compile time: a connection whose type declares ``learns_at_init=False``
(registration keyword, or class attribute of an in-process factory) is flagged by
``ProgramCompiler.compile()`` and ``canvas compile`` alone, before any module is built; a
connection of a type that declares nothing (every builtin) is not."""

from __future__ import annotations

import json

import pytest

import canvas_core.plugins as P
from canvas_core import CanvasLayout, CanvasSchema, CanvasTopology, Connection, ProgramCompiler
from canvas_core.cli import main
from canvas_core.errors import CanvasTypeError

FLAG = "declares learns_at_init=False: no parameter of it receives a gradient at initialisation"


class StuckType:
    """Stands in for a module class (never built here: the compiler builds no module)."""

    learns_at_init = False

    def __init__(self, d_model, n_heads=4, dropout=0.0):  # pragma: no cover - never called
        raise AssertionError("the compiler must not build modules")


class LearningType(StuckType):
    learns_at_init = True


@pytest.fixture()
def types():
    P.register_attention("t23_stuck_attr", StuckType)
    P.register_attention("t23_stuck_kw", "canvas_core.errors:NoSuchThing", learns_at_init=False)
    P.register_attention("t23_learns", LearningType)
    P.register_attention("t23_bad_decl", LearningType, learns_at_init="no")
    try:
        yield
    finally:
        for n in ("t23_stuck_attr", "t23_stuck_kw", "t23_learns", "t23_bad_decl"):
            P.unregister_attention(n)


def _schema(*fns):
    layout = CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})
    return CanvasSchema(layout=layout, topology=CanvasTopology(
        connections=[Connection("a", "b", fn=f) for f in fns]))


def test_compile_flags_declared_types_only(types):
    compiled = ProgramCompiler(_schema("cross_attention", "t23_stuck_attr", "t23_stuck_kw", "t23_learns",
                                       "linear_attention")).compile()
    res = compiled.plan.resolutions
    assert FLAG in res[1].no_gradient_at_init and "'t23_stuck_attr'" in res[1].no_gradient_at_init
    assert FLAG in res[2].no_gradient_at_init and "'t23_stuck_kw'" in res[2].no_gradient_at_init
    for i in (0, 3, 4):  # a builtin softmax type, a type declaring it learns, a builtin module type
        assert res[i].no_gradient_at_init == ""
        assert "learns_at_init" not in res[i].note
    assert FLAG in res[1].note
    text = compiled.report()
    notes = text.split("notes:")[1].split("\n\n")[0]
    assert f"#1: '{'t23_stuck_attr'}' {FLAG}" in notes and "#3" not in notes and "#4" not in notes
    group_rows = {line.split()[0]: line for line in text.split("fn groups")[1].splitlines()[3:]}
    assert group_rows["t23_stuck_attr"].count("NO GRADIENT AT INIT") == 2
    assert "NO GRADIENT AT INIT" not in group_rows["t23_learns"]
    assert "NO GRADIENT AT INIT" not in group_rows["linear_attention"]
    d = compiled.to_dict()["connections"]
    assert FLAG in d[2]["resolution"]["no_gradient_at_init"] and d[4]["resolution"]["no_gradient_at_init"] == ""


def test_canvas_compile_prints_the_flag(types, tmp_path, capsys):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(_schema("t23_stuck_kw", "linear_attention").to_dict()))
    assert main(["compile", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"#0: 't23_stuck_kw' {FLAG}" in out and "#1:" not in out.split("notes:")[1]
    assert main(["compile", str(path), "--json"]) == 0
    conns = json.loads(capsys.readouterr().out)["connections"]
    assert FLAG in conns[0]["resolution"]["no_gradient_at_init"]
    assert conns[1]["resolution"]["no_gradient_at_init"] == ""


def test_a_malformed_declaration_is_refused_naming_the_type(types):
    with pytest.raises(CanvasTypeError, match="'t23_bad_decl'.*learns_at_init must be True, False or absent"):
        ProgramCompiler(_schema("t23_bad_decl")).compile()


def test_no_builtin_type_is_flagged_at_compile_time():
    """Every builtin type learns (tests/runtime/test_type_learning.py), so none declares otherwise."""
    from canvas_core.plugins.builtin import BUILTIN_ATTENTION

    compiled = ProgramCompiler(_schema(*BUILTIN_ATTENTION)).compile()
    assert [r.no_gradient_at_init for r in compiled.plan.resolutions.values()] == [""] * len(BUILTIN_ATTENTION)
    assert "NO GRADIENT AT INIT" not in compiled.report()
