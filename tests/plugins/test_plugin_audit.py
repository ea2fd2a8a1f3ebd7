"""Regressions found by auditing real pip-installed throwaway plugins (issue 3).

Each test 'installs' distributions into a FakeSite (a .dist-info with entry_points.txt, exactly
what pip writes) and loads them through a fresh host using importlib.metadata discovery.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import canvas_core.plugins as P
from canvas_core.errors import DuplicateRegistrationError, PluginLoadError, UnknownNameError
from canvas_core.plugins import PluginHost, use_host

REGISTERS = '''
from canvas_core import hookimpl

@hookimpl
def canvas_register_attention(registry):
    registry.add("{name}", "x.y:Z", description="{desc}"{extra})
'''


def _fresh(**kw):
    return use_host(PluginHost(**kw))


def _dup(site, ep, desc, override=False):
    extra = ", override=True" if override else ""
    site.plugin(f"canvas-plugin-{ep}", ep, REGISTERS.format(name="shared_attn", desc=desc, extra=extra))


# ---------------------------------------------------------------------- override vs load order
@pytest.mark.parametrize("overrider", ["aaa", "zzz"])  # loads before / after the plain one
def test_override_between_installed_plugins_does_not_depend_on_load_order(site, overrider):
    _dup(site, "mmm", "plain")
    _dup(site, overrider, "override", override=True)
    with _fresh():
        spec = P.get_attention_spec("shared_attn")
        assert spec.description == "override" and spec.distribution == f"canvas-plugin-{overrider}"
        assert not any(r["conflicts"] for r in P.plugin_report())
        # removing the overrider brings the plain one back
        P.get_host().unregister_plugin(overrider)
        assert P.get_attention_spec("shared_attn").description == "plain"


def test_override_wins_over_several_plain_registrations(site):
    _dup(site, "aaa", "plain a")
    _dup(site, "mmm", "override", override=True)
    _dup(site, "zzz", "plain z")
    with _fresh():
        assert P.get_attention_spec("shared_attn").description == "override"


def test_two_plugins_overriding_the_same_name_conflict(site):
    _dup(site, "aaa", "one", override=True)
    _dup(site, "zzz", "two", override=True)
    with _fresh():
        with pytest.raises(DuplicateRegistrationError) as ei:
            P.get_attention_spec("shared_attn")
        msg = str(ei.value)
        assert "canvas-plugin-aaa" in msg and "canvas-plugin-zzz" in msg and "override=True" in msg


def test_plain_plugin_after_an_override_of_a_builtin_keeps_the_override(site):
    site.plugin("canvas-plugin-aaa", "aaa", '''
from canvas_core import hookimpl

@hookimpl
def canvas_register_attention(registry):
    registry.add("pooling", "x.y:Z", description="replaced", override=True)
''')
    site.plugin("canvas-plugin-zzz", "zzz", '''
from canvas_core import hookimpl

@hookimpl
def canvas_register_attention(registry):
    registry.add("pooling", "x.y:Z", description="clash")
''')
    with _fresh():
        assert P.get_attention_spec("pooling").description == "replaced"
        report = {r["name"]: r for r in P.plugin_report()}
        assert report["zzz"]["conflicts"] and not report["aaa"]["conflicts"]


# ---------------------------------------------------------------------- failed hooks keep nothing
def test_hook_raising_after_registering_keeps_nothing_and_using_the_name_says_why(site):
    site.plugin("canvas-plugin-halfway", "halfway", '''
from canvas_core import hookimpl

@hookimpl
def canvas_register_attention(registry):
    registry.add("half_registered", "x.y:Z")
    raise ValueError("hook exploded")

@hookimpl
def canvas_register_kernels(registry):
    registry.add("half_kernel", "x.y:K", supports=("cross_attention",))
''', version="0.4.2")
    with _fresh():
        assert "half_registered" not in P.list_attention_types()
        rec = {r["name"]: r for r in P.plugin_report()}["halfway"]
        assert rec["status"] == "failed" and rec["registered"] == {}
        assert rec["discarded"] == {"attention": ["half_registered"]}
        for lookup in (lambda: P.get_attention_spec("half_registered"),
                       lambda: P.resolve_attention("half_registered"),
                       lambda: P.create_attention("half_registered", d_model=8)):
            with pytest.raises(PluginLoadError) as ei:
                lookup()
            msg = str(ei.value)
            assert "canvas-plugin-halfway" in msg and "0.4.2" in msg and "hook exploded" in msg
        assert not P.get_plugin_manager().has_plugin("halfway")


def test_failed_plugin_that_had_overridden_a_builtin_restores_it(site):
    site.plugin("canvas-plugin-bad", "bad", '''
from canvas_core import hookimpl

@hookimpl
def canvas_register_attention(registry):
    registry.add("pooling", "x.y:Z", override=True)
    raise RuntimeError("later failure")
''')
    with _fresh():
        assert P.get_attention_spec("pooling").distribution == "canvas-core"


# ---------------------------------------------------------------------- hook name typos
def test_typo_in_one_of_several_hooks_fails_the_plugin(site):
    site.plugin("canvas-plugin-typo", "typo", '''
from canvas_core import hookimpl

@hookimpl
def canvas_register_attention(registry):
    registry.add("typo_attn", "x.y:Z")

@hookimpl
def canvas_register_kernel(registry):          # missing 's'
    registry.add("typo_kernel", "x.y:K", supports=("cross_attention",))
''')
    with _fresh():
        rec = {r["name"]: r for r in P.plugin_report()}["typo"]
        assert rec["status"] == "failed"
        assert "'canvas_register_kernel'" in rec["error"]
        assert "did you mean 'canvas_register_kernels'" in rec["error"]
        assert "typo_attn" not in P.list_attention_types()
        assert "cross_attention" in P.list_attention_types()


def test_optional_unknown_hook_is_allowed(site):
    site.plugin("canvas-plugin-future", "future", '''
from canvas_core import hookimpl

@hookimpl
def canvas_register_attention(registry):
    registry.add("future_attn", "x.y:Z")

@hookimpl(optionalhook=True)
def canvas_register_something_newer(registry):
    pass
''')
    with _fresh():
        rec = {r["name"]: r for r in P.plugin_report()}["future"]
        assert rec["status"] == "ok" and "future_attn" in P.list_attention_types()


# ---------------------------------------------------------------------- decorator form
def test_decorator_form_in_an_installed_plugin_is_attributed_to_its_distribution(site):
    site.plugin("canvas-plugin-deco", "deco", '''
from canvas_core import register_attention

@register_attention("deco_attn", family="Toy")
class DecoAttn:
    def __init__(self, d_model, n_heads=4, dropout=0.0):
        pass
''', version="2.0.0")
    with _fresh():
        spec = P.get_attention_spec("deco_attn")
        assert spec.distribution == "canvas-plugin-deco" and spec.version == "2.0.0"
        assert spec.plugin == "deco"
        rec = {r["name"]: r for r in P.plugin_report()}["deco"]
        assert rec["status"] == "ok" and rec["registered"] == {"attention": ["deco_attn"]}
        assert rec["warnings"] == []  # registered something: no 'implements no hook' warning
        assert "<in-process>" not in {r["name"] for r in P.plugin_report()}


def test_decorator_form_clashing_with_another_plugin_is_a_conflict_not_a_crash(site):
    _dup(site, "aaa", "hook")
    site.plugin("canvas-plugin-zzz", "zzz", '''
from canvas_core import register_attention

@register_attention("shared_attn")
class Clash:
    pass
''')
    with _fresh():
        assert "cross_attention" in P.list_attention_types()
        with pytest.raises(DuplicateRegistrationError, match="canvas-plugin-zzz"):
            P.get_attention_spec("shared_attn")


# ---------------------------------------------------------------------- heavy imports at registration
def test_plugin_importing_a_heavy_package_while_registering_is_warned(site, tmp_path):
    # a subprocess: torch must not be imported yet when the plugin loads
    site.plugin("canvas-plugin-eager", "eager", '''
import json   # stands in for torch: HEAVY_MODULES is patched below
from canvas_core import hookimpl

@hookimpl
def canvas_register_attention(registry):
    import fake_heavy_pkg
    registry.add("eager_attn", "x.y:Z")
''')
    site.module("fake_heavy_pkg", "X = 1\n")
    code = (
        "import canvas_core.plugins.loading as D\n"
        "D.HEAVY_MODULES = ('fake_heavy_pkg',)\n"
        "import canvas_core.plugins as P\n"
        "rec = {r['name']: r for r in P.plugin_report()}\n"
        "print(rec['eager']['warnings'])\n"
        "assert any('fake_heavy_pkg' in w and 'lazy' in w for w in rec['eager']['warnings'])\n"
        "assert not any('fake_heavy_pkg' in w for r in rec.values() if r['name'] != 'eager' for w in r['warnings'])\n"
    )
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site.path)] + sys.path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------------- unknown names, plugins not loaded
def test_unknown_name_mentions_installed_but_blocked_plugins(toy_plugin):
    dist, ep, attn = toy_plugin
    with _fresh(block=[ep]):
        with pytest.raises(UnknownNameError) as ei:
            P.get_attention_spec(attn)
        msg = str(ei.value)
        assert "not loaded" in msg and ep in msg and "CANVAS_BLOCK_PLUGINS" in msg
    with _fresh(autoload=False):
        with pytest.raises(UnknownNameError, match="CANVAS_DISABLE_PLUGIN_AUTOLOAD"):
            P.get_attention_spec(attn)


# ---------------------------------------------------------------------- canvas plugins
def test_cli_lists_typo_and_half_registered_plugins_as_failed(site, capsys):
    import argparse
    import json

    from canvas_core.commands import plugins as cmd

    site.plugin("canvas-plugin-typo", "typo", '''
from canvas_core import hookimpl

@hookimpl
def canvas_register_atention(registry):
    registry.add("typo_attn", "x.y:Z")
''')
    site.plugin("canvas-plugin-halfway", "halfway", '''
from canvas_core import hookimpl

@hookimpl
def canvas_register_attention(registry):
    registry.add("half_registered", "x.y:Z")
    raise ValueError("hook exploded")
''')
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    with _fresh():
        assert cmd.run(parser.parse_args(["--json", "--device", "cpu", "--strict"])) == 1
        doc = json.loads(capsys.readouterr().out)
        assert cmd.run(parser.parse_args(["--device", "cpu"])) == 0
        text = capsys.readouterr().out
    failures = {f["name"]: f["error"] for f in doc["failures"]}
    assert "canvas_register_atention" in failures["typo"] and "hook exploded" in failures["halfway"]
    assert {p["name"]: p["discarded"] for p in doc["plugins"]}["halfway"] == {"attention": ["half_registered"]}
    assert "half_registered" not in {r["name"] for r in doc["registries"]["attention"]}
    assert "did you mean 'canvas_register_attention'" in text
    assert "attention (discarded, plugin failed): half_registered" in text
