"""`from canvas_core import MambaAttention` without the mamba distribution keeps the install hint:
an ImportError naming the distribution, not Python's bare "cannot import name"."""

from __future__ import annotations

import pytest

import canvas_core
from canvas_core.errors import PluginNotInstalledError, UnknownNameError
from canvas_core.plugins import PluginHost, use_host


@pytest.fixture
def no_plugins(monkeypatch):
    monkeypatch.delitem(vars(canvas_core), "MambaAttention", raising=False)  # cached by an earlier test
    with use_host(PluginHost(entry_points=lambda: [])):
        yield


def test_from_import_of_a_missing_plugins_class_names_the_distribution(no_plugins) -> None:
    with pytest.raises(PluginNotInstalledError, match="canvas-plugin-mamba") as info:
        from canvas_core import MambaAttention  # noqa: F401
    assert isinstance(info.value, ImportError) and isinstance(info.value, UnknownNameError)
    assert info.value.name == "canvas_core" and info.value.name_from == "MambaAttention"


def test_attribute_access_and_hasattr_keep_their_errors(no_plugins) -> None:
    with pytest.raises(AttributeError, match="canvas-plugin-mamba"):
        canvas_core.MambaAttention  # noqa: B018
    assert not hasattr(canvas_core, "MambaAttention")
    assert getattr(canvas_core, "MambaAttention", None) is None


def test_an_unknown_name_imported_from_stays_pythons_error() -> None:
    with pytest.raises(ImportError, match="cannot import name 'NoSuchThing'") as info:
        from canvas_core import NoSuchThing  # noqa: F401
    assert not isinstance(info.value, PluginNotInstalledError)
