"""``canvas plugins`` reads its whole document from one moment, and a re-exported plugin class
whose plugin failed to load is an ``AttributeError`` to ``hasattr`` / ``getattr`` while code naming
it (``canvas_core.X``, ``from canvas_core import X``) still gets the plugin's ``PluginLoadError``."""

from __future__ import annotations

import importlib
import types
import warnings
from typing import Any

import pytest

import canvas_core
import canvas_core.plugins as P
from canvas_core.commands.plugins import collect
from canvas_core.errors import PluginError, PluginLoadAttributeError, PluginLoadError
from canvas_core.plugins import PluginHost, use_host
from tests.plugins._fakes import FakeEntryPoint, Attn


def _clashing(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.canvas_register_attention = P.hookimpl(lambda registry: registry.add("a3_contested", Attn))
    return mod


def test_collect_reads_plugins_conflicts_and_registries_from_one_moment():
    """A second provider of a name arrives between two reads of ``collect``: the document shows
    the clash everywhere or nowhere."""
    with warnings.catch_warnings(), use_host(PluginHost(entry_points=lambda: [])) as host:
        warnings.simplefilter("ignore")
        host.register_plugin(_clashing("a3first"), "a3first")
        report = host.plugin_report

        def report_then_clash(*args: Any, **kwargs: Any) -> Any:
            rows = report(*args, **kwargs)
            if "a3second" not in host.records:  # another thread's plugin lands right after this read
                host._add_plugin(_clashing("a3second"), P.PluginRecord("a3second", "in-process"), strict=False)
            return rows

        host.plugin_report = report_then_clash
        doc = collect()
        listed = bool(doc["conflicts"].get("attention", {}).get("a3_contested"))
        row_clash = any(p["conflicts"] for p in doc["plugins"])
        reg_row = {r["name"]: r for r in doc["registries"]["attention"]}["a3_contested"]
        assert listed == row_clash == ("conflict" in reg_row), doc["conflicts"]
        assert not listed  # the snapshot was taken before the second plugin arrived
        assert collect()["conflicts"]["attention"]["a3_contested"]  # and the next report shows it


@pytest.fixture
def failed_mamba(monkeypatch):
    def load() -> Any:
        raise RuntimeError("a3: the mamba extension is broken")

    # an earlier test that read canvas_core.MambaAttention left it cached in the package's namespace
    monkeypatch.delitem(vars(canvas_core), "MambaAttention", raising=False)
    with use_host(PluginHost(entry_points=lambda: [FakeEntryPoint("mamba", load, "canvas-plugin-mamba")])):
        yield


def test_hasattr_and_getattr_of_a_failed_plugins_class_answer_like_attributes(failed_mamba):
    reexports = importlib.import_module("canvas_core.reexports")
    assert hasattr(canvas_core, "MambaAttention") is False
    assert getattr(canvas_core, "MambaAttention", None) is None
    assert not hasattr(reexports, "MambaAttention")
    name = "MambaAttention"  # probed by name, as a library would
    with pytest.raises(PluginLoadAttributeError) as ei:
        getattr(canvas_core, name)
    err = ei.value
    assert isinstance(err, AttributeError) and isinstance(err, PluginError)
    assert "a3: the mamba extension is broken" in str(err) and "canvas-plugin-mamba" in str(err)
    assert isinstance(err.load_error, PluginLoadError) and err.__cause__ is err.load_error
    assert err.name == "MambaAttention"


def test_code_naming_the_class_still_gets_the_plugins_load_error(failed_mamba):
    with pytest.raises(PluginLoadError, match="a3: the mamba extension is broken"):
        canvas_core.MambaAttention
    with pytest.raises(PluginLoadError, match="a3: the mamba extension is broken"):
        canvas_core.MambaAttention(d_model=8)
    with pytest.raises(PluginLoadError, match="a3: the mamba extension is broken"):
        from canvas_core import MambaAttention  # noqa: F401
    with pytest.raises(PluginLoadError, match="a3: the mamba extension is broken"):
        from canvas_core.reexports import MambaAttention  # noqa: F401,F811
