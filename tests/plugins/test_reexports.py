"""canvas_core.MambaAttention / CogVideoXAttention come from plugins, with an install hint when absent."""

from __future__ import annotations

import importlib

import pytest

import canvas_core.plugins as P
from canvas_core.errors import UnknownNameError
from canvas_core.plugins import PluginHost, hookimpl, use_host

reexports = importlib.import_module("canvas_core.reexports")


class FakeMamba:
    pass


def test_absent_plugin_raises_with_hint(host):
    with pytest.raises(UnknownNameError) as ei:
        reexports.MambaAttention
    assert "pip install canvas-plugin-mamba" in str(ei.value)
    assert isinstance(ei.value, AttributeError)
    assert not hasattr(reexports, "CogVideoXAttention")
    with pytest.raises(AttributeError):
        reexports.NotAThing


def test_present_plugin_is_reexported(host):
    import types

    plugin = types.SimpleNamespace(canvas_register_attention=hookimpl(
        lambda registry: registry.add("mamba", FakeMamba)))
    host.register_plugin(plugin, "fake-mamba")
    assert reexports.MambaAttention is FakeMamba


def test_installed_mamba_plugin_when_available():
    with use_host(PluginHost()):
        if "mamba" not in P.list_attention_types():
            pytest.skip("canvas-plugin-mamba is not installed")
        cls = reexports.MambaAttention
        assert cls is P.get_attention_spec("mamba").load()
