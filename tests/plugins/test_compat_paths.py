"""The canvas-engineering module paths made from the alias table (canvas_core/_compat.py)."""

import importlib
import pathlib
import subprocess
import sys

import pytest

import canvas_core
from canvas_core._compat import ALIASES

PACKAGE_DIR = pathlib.Path(canvas_core.__file__).parent


@pytest.mark.parametrize("short", sorted(ALIASES))
def test_three_import_spellings_give_the_same_module_and_names(short):
    mod = importlib.import_module(f"canvas_core.{short}")
    ns: dict = {}
    exec(f"from canvas_core import {short} as m", ns)
    assert ns["m"] is mod is sys.modules[f"canvas_core.{short}"]
    alias = ALIASES[short]
    assert mod.__all__ == list(alias.names)
    for name in alias.names + alias.also:
        exec(f"from canvas_core.{short} import {name} as x", ns)
        assert ns["x"] is getattr(mod, name)
        if name not in alias.renamed:
            assert ns["x"] is getattr(canvas_core, name)
    assert set(dir(mod)) == set(alias.names) | set(alias.also)


def test_star_import_gives_the_module_names_only():
    ns: dict = {}
    exec("from canvas_core.graft import *", ns)
    assert {"graft_looped_blocks", "freeze_full", "freeze_half"} <= set(ns)
    assert "LoopedBlockWrapper" not in ns  # imported by canvas-engineering's module, not its own


def test_unknown_name_of_an_alias_is_an_attribute_error():
    masks = importlib.import_module("canvas_core.masks")
    with pytest.raises(AttributeError, match="canvas_core.masks"):
        masks.NoSuchThing  # noqa: B018
    with pytest.raises(ImportError):
        exec("from canvas_core.masks import NoSuchThing", {})


def test_aliases_do_not_shadow_real_modules_and_other_names_are_not_aliases():
    for short in ALIASES:
        assert not (PACKAGE_DIR / f"{short}.py").exists(), short
        assert not (PACKAGE_DIR / short).is_dir(), short
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("canvas_core.no_such_module")


def test_renamed_clock_helpers_point_at_the_program_layer():
    from canvas_core.clock_ir import boundary, on, periodic
    from canvas_core.program.clock_ir import clock_boundary, clock_on, clock_periodic

    assert (periodic, on, boundary) == (clock_periodic, clock_on, clock_boundary)


def test_every_canvas_engineering_module_has_a_path_here():
    ce = pytest.importorskip("canvas_engineering", reason="canvas-engineering is not installed")
    import pkgutil

    for info in pkgutil.iter_modules(ce.__path__):
        assert importlib.util.find_spec(f"canvas_core.{info.name}") is not None, info.name


def test_aliases_import_without_torch_in_a_fresh_process():
    code = ("import sys, canvas_core.masks, canvas_core.types as t\n"
            "from canvas_core import graft\n"
            "dir(t); dir(graft)\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
