"""A plugin's listed conflicts are those the registries hold now, not text kept from the moment it
registered.

Regression: two installed plugins registering one attention name; after
``unregister_plugin(<first>)`` the name resolved to the second, yet ``plugin_report()`` and
``canvas plugins`` still listed the clash on the second plugin (and ``--strict`` failed on it).
"""

from __future__ import annotations

import warnings

import pytest

import canvas_core.plugins as P
from canvas_core.commands.plugins import _text, collect, strict_problems
from canvas_core.errors import DuplicateRegistrationError
from canvas_core.plugins import PluginHost, use_host

REGISTERS = '''
from canvas_core import hookimpl

@hookimpl
def canvas_register_attention(registry):
    registry.add("{name}", "x.y:Z", description="{desc}")
'''


class Own:
    def __init__(self, d_model, n_heads=4, dropout=0.0):
        pass


def _install(site, *eps, name="contested_attn"):
    for ep in eps:
        site.plugin(f"canvas-plugin-{ep}", ep, REGISTERS.format(name=name, desc=ep))


def _conflicts():
    return {r["name"]: r["conflicts"] for r in P.plugin_report()}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_unregistering_one_side_clears_the_other_sides_conflict(site):
    _install(site, "first", "second")
    with use_host(PluginHost()) as host:
        before = _conflicts()
        assert before["second"] and "canvas-plugin-first" in before["second"][0] and not before["first"]
        with pytest.raises(DuplicateRegistrationError):
            P.get_attention_spec("contested_attn")
        host.unregister_plugin("first")
        assert P.get_attention_spec("contested_attn").distribution == "canvas-plugin-second"
        assert _conflicts()["second"] == []
        assert host.records["second"].conflicts == []
        assert host.conflicts_of("second") == []
        doc = collect()
        assert "conflict:" not in _text(doc) and "contested_attn" not in doc["conflicts"].get("attention", {})
        assert not [p for p in strict_problems(doc) if "provided twice" in p]


def test_an_override_hides_the_conflict_and_its_removal_brings_it_back(site):
    _install(site, "first", "second")
    with use_host(PluginHost()) as host:
        clash = _conflicts()["second"]
        assert clash
        P.register_attention("contested_attn", Own, override=True)
        assert P.get_attention_spec("contested_attn").factory is Own
        assert _conflicts()["second"] == []  # the name resolves: nothing is fought over now
        P.unregister_attention("contested_attn")
        assert _conflicts()["second"] == clash == host.conflicts_of("second")
        with pytest.raises(DuplicateRegistrationError):
            P.get_attention_spec("contested_attn")


def test_every_refused_plugin_keeps_its_own_message_while_the_clash_holds(site):
    _install(site, "aaa", "mmm", "zzz")
    with use_host(PluginHost()) as host:
        found = _conflicts()
        assert not found["aaa"]
        assert "canvas-plugin-mmm" in found["mmm"][0] and "canvas-plugin-zzz" in found["zzz"][0]
        host.unregister_plugin("aaa")  # mmm now holds the name; zzz still clashes with it
        found = _conflicts()
        assert found["mmm"] == [] and len(found["zzz"]) == 1
        assert "canvas-plugin-mmm" in found["zzz"][0] and "canvas-plugin-aaa" not in found["zzz"][0]


def test_a_builtin_names_refusal_is_listed_and_goes_with_the_plugin(site):
    _install(site, "squat", name="pooling")
    _install(site, "other", name="other_attn")
    with use_host(PluginHost()) as host:
        found = _conflicts()
        assert len(found["squat"]) == 1 and "canvas-core" in found["squat"][0] and found["other"] == []
        host.unregister_plugin("squat")
        assert "squat" not in _conflicts() and P.get_attention_spec("pooling").plugin == "builtin"
