"""``Spec.factory_problem`` / ``missing_requirements``: modules are found without importing them."""

import sys

import pytest

from canvas_core.plugins.spec import Spec


@pytest.mark.parametrize("factory", ["os.path:join", "json:loads", "canvas_core.errors:CanvasError"])
def test_importable_factories_have_no_problem(factory):
    assert Spec(name="t", factory=factory).factory_problem() is None


@pytest.mark.parametrize("factory, missing", [
    ("canvas_core.atention:CanvasAttention", "canvas_core.atention"),
    ("no_such_top_package_xyz.mod:Thing", "no_such_top_package_xyz"),
    ("json.no_such_child:loads", "json.no_such_child"),
    ("json.decoder.child:loads", "json.decoder.child"),  # json.decoder exists but is no package
    ("canvas_core.errors.child.deeper:X", "canvas_core.errors.child"),  # imported plain module
])
def test_missing_factory_module_is_named(factory, missing):
    problem = Spec(name="t", factory=factory).factory_problem()
    assert problem is not None and repr(missing) in problem


def _unimportable_package(tmp_path, monkeypatch, name):
    """A package ``name`` with a submodule ``mod`` whose import would raise."""
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (tmp_path / name / "mod.py").write_text("class Thing: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_check_imports_nothing(tmp_path, monkeypatch):
    _unimportable_package(tmp_path, monkeypatch, "lazy_factory_pkg_abc")
    assert Spec(name="t", factory="lazy_factory_pkg_abc.mod:Thing").factory_problem() is None
    assert "lazy_factory_pkg_abc" not in sys.modules
    assert "lazy_factory_pkg_abc.mod" not in sys.modules


def test_requirements_are_found_the_same_way_without_importing(tmp_path, monkeypatch):
    _unimportable_package(tmp_path, monkeypatch, "lazy_requirement_pkg_abc")
    spec = Spec(name="t", factory=dict, requires=("lazy_requirement_pkg_abc.mod", "lazy_requirement_pkg_abc.gone"))
    assert spec.missing_requirements() == ["lazy_requirement_pkg_abc.gone"]  # a submodule too, parent not imported
    assert "lazy_requirement_pkg_abc" not in sys.modules
