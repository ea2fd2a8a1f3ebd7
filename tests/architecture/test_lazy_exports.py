"""`canvas_core._lazy.lazy_exports`: the one way a module hands out names lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

from canvas_core._lazy import lazy_exports


def test_module_attr_and_builder_sources_cache_and_unknown_names():
    calls = []
    ns = {}
    getattr_, dir_ = lazy_exports("pkg.mod", {
        "sqrt": "math",                         # same name there
        "root": "math:sqrt",                    # another name there
        "built": lambda: calls.append(1) or 42,  # built on first access
    }, ns)
    import math

    assert getattr_("sqrt") is math.sqrt and getattr_("root") is math.sqrt
    assert getattr_("built") == 42 and ns["built"] == 42 and calls == [1]
    assert dir_() == ["built", "root", "sqrt"]
    with pytest.raises(AttributeError, match="module 'pkg.mod' has no attribute 'nope'"):
        getattr_("nope")


def test_without_a_namespace_nothing_is_cached():
    table = {"x": lambda: object()}
    getattr_, dir_ = lazy_exports("m", table)
    assert getattr_("x") is not getattr_("x") and dir_() == ["x"]


def test_modules_using_it_stay_lazy_and_keep_their_names():
    code = ("import sys, canvas_core, canvas_core.semantic as s, canvas_core.compiler as c, canvas_core.extend as e, "
            "canvas_core.program as p, canvas_core.masks as m; "
            "assert 'torch' not in sys.modules; "
            "assert c.resolve_plan.__module__ == 'canvas_core.compiler.resolution'; "
            "assert p.CanvasSchema is canvas_core.CanvasSchema and m.Rect is canvas_core.Rect; "
            "assert 'SemanticConditioner' in dir(s) and 'ExecutionPlan' in dir(e); "
            "assert s.SemanticConditioner.__module__ == 'canvas_core.runtime.semantic_conditioner'; "
            "assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_hand_written_module_getattr_outside_the_helper():
    import ast
    from pathlib import Path

    core = Path(__file__).resolve().parents[2] / "canvas_core"
    found = sorted(str(p.relative_to(core)) for p in core.rglob("*.py")
                   if any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__"
                          for n in ast.parse(p.read_text()).body))
    assert set(found) <= {"_lazy.py"}, found
