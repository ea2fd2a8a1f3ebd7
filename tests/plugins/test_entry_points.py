"""Installed plugins (real .dist-info + entry_points.txt on sys.path), failures, env controls."""

from __future__ import annotations

import pytest

import canvas_core.plugins as P
from canvas_core.errors import DuplicateRegistrationError, PluginLoadError, UnknownNameError
from canvas_core.plugins import PluginHost, use_host

BROKEN_IMPORT = '''
raise RuntimeError("boom at import")
'''

BROKEN_HOOK = '''
from canvas_core import hookimpl

@hookimpl
def canvas_register_attention(registry):
    registry.add("half_registered", "x.y:Z")
    raise ValueError("hook exploded")
'''

REGISTERS = '''
from canvas_core import hookimpl

@hookimpl
def canvas_register_attention(registry):
    registry.add("{name}", "x.y:Z", description="{desc}")
'''


def _fresh(**kw):
    return use_host(PluginHost(**kw))


def test_installed_plugin_is_discovered_with_no_extra_step(toy_plugin):
    dist, ep, attn = toy_plugin
    with _fresh() as host:  # default discovery through importlib.metadata
        assert attn in P.list_attention_types()
        spec = P.get_attention_spec(attn)
        assert spec.distribution == dist and spec.version == "1.2.3" and spec.plugin == ep
        rec = {r["name"]: r for r in P.plugin_report()}[ep]
        assert rec["status"] == "ok" and rec["distribution"] == dist and rec["version"] == "1.2.3"
        assert rec["hooks"] == ["canvas_register_attention"]
        assert rec["registered"] == {"attention": [attn]}
        assert P.ATTENTION_TYPES[attn].family == "Toy"
        assert P.get_plugin_manager().has_plugin(ep)
        assert host.records[ep].plugin is not None


def test_toy_plugin_passes_conformance_and_runs_in_a_topology(toy_plugin):
    pytest.importorskip("torch")
    from canvas_core.testing import check_attention_type

    dist, ep, attn = toy_plugin
    with _fresh():
        report = check_attention_type(attn)
        assert report.ok and "batch independence" in report.passed
        try:
            from canvas_core.runtime.canvas_attention import CanvasAttention
            from canvas_core.schema import CanvasLayout, CanvasTopology, Connection
        except ImportError as exc:  # pragma: no cover - runtime layer not there yet
            pytest.skip(f"runtime not importable: {exc}")
        import torch

        layout = CanvasLayout(T=2, H=2, W=2, d_model=16, regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})
        topo = CanvasTopology(connections=[Connection("a", "b", fn=attn), Connection("b", "a")])
        layer = CanvasAttention(topo, layout, d_model=16, n_heads=2)
        out = layer(torch.randn(2, layout.num_positions, 16))
        assert out.shape == (2, layout.num_positions, 16) and torch.isfinite(out).all()


def test_plugin_raising_at_import_is_recorded_and_core_keeps_working(site):
    site.plugin("canvas-plugin-kaputt", "kaputt", BROKEN_IMPORT, version="0.0.7")
    with _fresh():
        assert "cross_attention" in P.list_attention_types()  # core fine
        rec = {r["name"]: r for r in P.plugin_report()}["kaputt"]
        assert rec["status"] == "failed"
        assert rec["distribution"] == "canvas-plugin-kaputt" and rec["version"] == "0.0.7"
        assert "RuntimeError" in rec["error"] and "boom at import" in rec["error"]
        # the entry-point name is a name it would have provided
        with pytest.raises(PluginLoadError) as ei:
            P.create_attention("kaputt", d_model=8)
        msg = str(ei.value)
        assert "kaputt" in msg and "canvas-plugin-kaputt" in msg and "boom at import" in msg
        # an unrelated unknown name still mentions the failure as a note
        with pytest.raises(UnknownNameError, match="kaputt"):
            P.create_attention("totally_unrelated", d_model=8)


def test_failed_plugin_detected_through_hint_table(site):
    # a broken distribution that the hint table knows provides 'mamba' (shadows any real one)
    site.plugin("canvas-plugin-mamba", "mamba_broken", BROKEN_IMPORT)
    with _fresh():
        with pytest.raises(PluginLoadError) as ei:
            P.get_attention_spec("mamba")
        assert "canvas-plugin-mamba" in str(ei.value) and "boom at import" in str(ei.value)


def test_hook_raising_is_recorded(site):
    site.plugin("canvas-plugin-halfway", "halfway", BROKEN_HOOK)
    with _fresh():
        rec = {r["name"]: r for r in P.plugin_report()}["halfway"]
        assert rec["status"] == "failed" and "hook exploded" in rec["error"]
        assert "canvas_register_attention" in rec["error"]
        assert "cross_attention" in P.ATTENTION_REGISTRY
        with pytest.raises(PluginLoadError, match="hook exploded"):
            P.get_attention_spec("halfway")


def test_conflict_between_installed_plugins(site):
    site.plugin("canvas-plugin-first", "first", REGISTERS.format(name="shared_attn", desc="one"))
    site.plugin("canvas-plugin-second", "second", REGISTERS.format(name="shared_attn", desc="two"))
    with _fresh():
        assert "cross_attention" in P.list_attention_types()  # the core keeps working
        report = {r["name"]: r for r in P.plugin_report()}
        assert report["second"]["conflicts"] and not report["first"]["conflicts"]
        with pytest.raises(DuplicateRegistrationError) as ei:  # never a silent pick
            P.get_attention_spec("shared_attn")
        assert "canvas-plugin-first" in str(ei.value) and "canvas-plugin-second" in str(ei.value)
    with _fresh(block=["second"]):
        assert P.get_attention_spec("shared_attn").distribution == "canvas-plugin-first"


def test_env_disable_autoload(toy_plugin, monkeypatch):
    dist, ep, attn = toy_plugin
    monkeypatch.setenv("CANVAS_DISABLE_PLUGIN_AUTOLOAD", "1")
    with _fresh():
        assert attn not in P.list_attention_types()
        assert "cross_attention" in P.list_attention_types()  # builtins still there
        rec = {r["name"]: r for r in P.plugin_report()}[ep]
        assert rec["status"] == "disabled" and rec["distribution"] == dist
        with pytest.raises(UnknownNameError, match="CANVAS_DISABLE_PLUGIN_AUTOLOAD"):
            P.get_attention_spec(attn)


def test_env_allow_list(toy_plugin, site, monkeypatch):
    dist, ep, attn = toy_plugin
    other_dist = "canvas-plugin-other"
    site.plugin(other_dist, "other", REGISTERS.format(name="other_attn", desc="o"))
    monkeypatch.setenv("CANVAS_PLUGINS", ep)  # by entry-point name
    with _fresh():
        assert attn in P.list_attention_types() and "other_attn" not in P.list_attention_types()
        rec = {r["name"]: r for r in P.plugin_report()}["other"]
        assert rec["status"] == "blocked" and "CANVAS_PLUGINS" in rec["error"]
        with pytest.raises(UnknownNameError, match="CANVAS_PLUGINS"):
            P.get_attention_spec("other")
    monkeypatch.setenv("CANVAS_PLUGINS", f" {other_dist} , unrelated")  # by distribution name
    with _fresh():
        assert attn not in P.list_attention_types() and "other_attn" in P.list_attention_types()


def test_env_block_list(toy_plugin, monkeypatch):
    dist, ep, attn = toy_plugin
    for value in (ep, dist, dist.upper().replace("-", "_")):
        monkeypatch.setenv("CANVAS_BLOCK_PLUGINS", f"something-else,{value}")
        with _fresh():
            assert attn not in P.list_attention_types(), value
            rec = {r["name"]: r for r in P.plugin_report()}[ep]
            assert rec["status"] == "blocked" and "CANVAS_BLOCK_PLUGINS" in rec["error"]
    monkeypatch.delenv("CANVAS_BLOCK_PLUGINS")
    with _fresh():
        assert attn in P.list_attention_types()


def test_lazy_load_cached_and_reset_rereads_env(toy_plugin, monkeypatch):
    dist, ep, attn = toy_plugin
    host = PluginHost()
    assert not host.loaded
    with use_host(host):
        assert attn in P.list_attention_types()
        assert host.loaded
        pm = P.get_plugin_manager()
        assert P.get_plugin_manager() is pm  # cached
        monkeypatch.setenv("CANVAS_BLOCK_PLUGINS", ep)
        assert attn in P.list_attention_types()  # not re-read until reset
        P.reset_plugins()
        assert not host.loaded
        assert attn not in P.list_attention_types()
        monkeypatch.delenv("CANVAS_BLOCK_PLUGINS")
        host.reset()
        assert attn in P.list_attention_types()  # loaded again on first use


def test_unmarked_hook_function_is_accepted(site):
    site.plugin("canvas-plugin-plain", "plain", '''
def canvas_register_attention(registry):   # no marker: accepted by name
    registry.add("plain_attn", "x.y:Z")
''')
    with _fresh():
        assert "plain_attn" in P.list_attention_types()
        rec = {r["name"]: r for r in P.plugin_report()}["plain"]
        assert rec["status"] == "ok" and rec["hooks"] == ["canvas_register_attention"]


def test_misspelt_marked_hook_fails_the_plugin_naming_the_hook(site):
    # pluggy's validation: a marked function matching no hook spec is an error of the plugin
    # (a warning would let a plugin load with half its registrations silently missing)
    site.plugin("canvas-plugin-plain", "plain", '''
from canvas_core import hookimpl

def canvas_register_attention(registry):
    registry.add("plain_attn", "x.y:Z")

@hookimpl
def canvas_register_atention(registry):    # typo
    pass
''')
    with _fresh():
        assert "cross_attention" in P.list_attention_types()
        assert "plain_attn" not in P.list_attention_types()  # all or nothing
        rec = {r["name"]: r for r in P.plugin_report()}["plain"]
        assert rec["status"] == "failed"
        assert "canvas_register_atention" in rec["error"] and "did you mean 'canvas_register_attention'" in rec["error"]
        assert not P.get_plugin_manager().has_plugin("plain")
        with pytest.raises(PluginLoadError, match="canvas_register_atention"):
            P.get_attention_spec("plain")


def test_entry_point_object_form(site):
    mod = site.module(site.unique("objform"), '''
from canvas_core import hookimpl

class _Plugin:
    @hookimpl
    def canvas_register_kernels(self, registry):
        registry.add("objform_kernel", "x.y:K", supports=("cross_attention",), priority=-5)

plugin = _Plugin()
''')
    site.dist("canvas-backend-objform", "3.0", {"objform": f"{mod}:plugin"})
    with _fresh():
        spec = P.get_kernel_spec("objform_kernel")
        assert spec.distribution == "canvas-backend-objform" and spec.version == "3.0"
        assert spec.supports == ("cross_attention",) and spec.priority == -5


def test_installed_plugin_clashing_with_a_builtin_does_not_break_it(site):
    site.plugin("canvas-plugin-squatter", "squatter", REGISTERS.format(name="cross_attention", desc="mine"))
    with _fresh():
        spec = P.get_attention_spec("cross_attention")  # the builtin, still usable
        assert spec.distribution == "canvas-core"
        rec = {r["name"]: r for r in P.plugin_report()}["squatter"]
        assert rec["conflicts"] and "canvas-plugin-squatter" in rec["conflicts"][0]
        assert "canvas-core" in rec["conflicts"][0]


@pytest.mark.parametrize("source,value,needle", [
    ("def broken(:\n", None, "SyntaxError"),
    ("x = 1\n", "canvas_no_such_module_abc", "ModuleNotFoundError"),
    ("x = 1\n", ":missing_attr", "AttributeError"),
    ("import sys\nsys.exit(3)\n", None, "SystemExit"),
    ("from canvas_core import hookimpl\n@hookimpl\ndef canvas_register_attention(registry):\n"
     "    registry.add('bad name!', 'a.b:C')\n", None, "invalid attention name"),
    ("from canvas_core import hookimpl\n@hookimpl\ndef canvas_register_attention(wrong_arg):\n"
     "    pass\n", None, "wrong_arg"),
])
def test_many_kinds_of_broken_plugins(site, source, value, needle):
    mod = site.module(site.unique("brk"), source)
    if value is None:
        ep_value = mod
    elif value.startswith(":"):
        ep_value = f"{mod}{value}"
    else:
        ep_value = value
    site.dist("canvas-plugin-brk", "0.1", {"brk": ep_value})
    with _fresh():
        assert "cross_attention" in P.list_attention_types()
        rec = {r["name"]: r for r in P.plugin_report()}["brk"]
        assert rec["status"] == "failed" and needle in rec["error"], rec["error"]
        with pytest.raises(PluginLoadError, match="canvas-plugin-brk"):
            P.create_attention("brk", d_model=8)


def test_concurrent_first_access_waits_for_loading(site):
    site.plugin("canvas-plugin-slow", "slow", '''
import time
from canvas_core import hookimpl

@hookimpl
def canvas_register_attention(registry):
    time.sleep(0.3)
    registry.add("slow_attn", "x.y:Z")
''')
    import threading

    seen = []
    with _fresh() as host:
        threads = [threading.Thread(target=lambda: seen.append("slow_attn" in host.registry("attention")))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert seen == [True] * 4
