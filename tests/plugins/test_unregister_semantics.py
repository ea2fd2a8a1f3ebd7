"""``unregister_*`` removes only in-process registrations (audit: unregistering "pooling" twice
after an override removed the builtin for the rest of the process, silently)."""

from __future__ import annotations

import types

import pytest

import canvas_core.plugins as P
from canvas_core.errors import PluginError, UnknownNameError
from canvas_core.plugins import hookimpl


class Dummy:
    def __init__(self, d_model, n_heads=4, dropout=0.0):
        self.d_model = d_model


def test_unregistering_an_override_twice_keeps_the_builtin(host):
    builtin = P.get_attention_spec("pooling")
    mine = P.register_attention("pooling", Dummy, override=True)
    assert P.unregister_attention("pooling") is mine
    assert P.get_attention_spec("pooling") is builtin
    with pytest.raises(PluginError, match=r"cannot unregister attention type 'pooling': it is provided by "
                                          r"canvas-core.*override=True.*reset_plugins\(\)"):
        P.unregister_attention("pooling")
    assert P.get_attention_spec("pooling") is builtin
    assert type(P.create_attention("pooling", d_model=8)).__name__ == "PoolingAttention"


def test_a_builtin_of_every_registry_is_refused(host):
    with pytest.raises(PluginError, match="unregister_kernel removes only what register_kernel added"):
        P.unregister_kernel("reference")
    assert "reference" in P.list_kernels()


def test_a_plugins_name_is_refused_with_the_block_list_hint(host):
    plugin = types.SimpleNamespace(canvas_register_attention=hookimpl(
        lambda registry: registry.add("unreg_plugin_type", Dummy)))
    host.register_plugin(plugin, "unreg-plugin", distribution="canvas-plugin-unreg")
    with pytest.raises(PluginError, match=r"canvas-plugin-unreg.*unregister_plugin\('unreg-plugin'\).*"
                                          r"CANVAS_BLOCK_PLUGINS=unreg-plugin"):
        P.unregister_attention("unreg_plugin_type")
    assert "unreg_plugin_type" in P.list_attention_types()


def test_in_process_registrations_unwind_in_order(host):
    first = P.register_attention("unreg_stack", Dummy)
    second = P.register_attention("unreg_stack", Dummy, override=True)
    assert P.unregister_attention("unreg_stack") is second
    assert P.get_attention_spec("unreg_stack") is first
    assert P.unregister_attention("unreg_stack") is first
    with pytest.raises(UnknownNameError, match="unreg_stack"):
        P.unregister_attention("unreg_stack")
