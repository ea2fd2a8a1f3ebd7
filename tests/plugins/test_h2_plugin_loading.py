"""Hostile plugin loading: what a failed, interrupted or malformed plugin leaves behind, and
readers that must see the registries of one moment.

Regressions (each test fails on the code before its fix):

* a plugin record's ``conflicts`` was a stored list, filled only by ``plugin_report()`` and stale
  in between;
* ``registry_report()`` read each registry at a different moment, so a registration made while it
  ran showed up in some registries and not in others;
* a name whose registration failed (malformed metadata) was an ``UnknownNameError`` (a
  ``ValueError``) rather than the ``PluginLoadError`` of its plugin;
* names an entry point's import registered before the import raised stayed registered, usable,
  though the plugin was reported failed;
* a Ctrl-C while plugins loaded left the host "loaded" with the rest of the plugins missing for good;
* one installed distribution with a malformed ``entry_points.txt`` made the first registry access
  raise a bare ``TypeError``, and every installed plugin stayed unloaded afterwards.
"""

from __future__ import annotations

import threading
import types
import warnings
from typing import Any, Callable, List

import pytest

import canvas_core.plugins as P
from canvas_core.errors import DuplicateRegistrationError, PluginLoadError
from canvas_core.plugins import PluginHost, use_host

REGISTERS = '''
from canvas_core import hookimpl

@hookimpl
def canvas_register_attention(registry):
    registry.add("{name}", "x.y:Z", description="{desc}")
'''


class Attn:
    """A toy attention class (never built)."""

    def __init__(self, d_model: int, n_heads: int = 4, dropout: float = 0.0) -> None:
        self.d_model = d_model


class _Dist:
    def __init__(self, name: str) -> None:
        self.name, self.version = name, "0.1"


class FakeEntryPoint:
    """An entry point of group ``canvas`` whose ``load()`` returns ``obj``, or calls it when
    ``call`` is set (a plugin whose import does something)."""

    def __init__(self, name: str, obj: Any, call: bool = False) -> None:
        self.name, self.value, self.dist = name, f"h2_fake_{name}", _Dist(f"canvas-plugin-{name}")
        self._obj, self._call = obj, call

    def load(self) -> Any:
        return self._obj() if self._call else self._obj


def _host(*eps: FakeEntryPoint) -> PluginHost:
    return PluginHost(entry_points=lambda: list(eps))


def _plugin(name: str, **hooks: Callable[..., Any]) -> types.ModuleType:
    mod = types.ModuleType(name)
    for hook, fn in hooks.items():
        setattr(mod, hook, fn)
    return mod


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_a_record_reads_its_conflicts_off_the_registries_whenever_asked(site):
    for ep in ("first", "second"):
        site.plugin(f"canvas-plugin-{ep}", ep, REGISTERS.format(name="h2_contested", desc=ep))
    with use_host(PluginHost(allow=["first", "second"])) as host:
        host.ensure_loaded()
        rec = host.records["second"]
        assert len(rec.conflicts) == 1 and "canvas-plugin-first" in rec.conflicts[0]  # no report needed
        row = {r["name"]: r for r in P.plugin_report()}["second"]
        assert row["conflicts"] == rec.conflicts
        keys = list(row)
        assert keys[keys.index("hooks") + 1] == "conflicts"  # `canvas plugins --json` keeps its key order
        host.unregister_plugin("first")
        assert rec.conflicts == [] and host.conflicts_of("second") == []
        assert P.get_attention_spec("h2_contested").distribution == "canvas-plugin-second"
        host.unregister_plugin("second")
        assert rec.conflicts == []  # a record its host dropped has no clashes there


def test_registry_report_reads_every_registry_at_one_moment():
    """A spec's availability check registers an attention type and a kernel from another thread
    while the report runs: the report shows both or neither, never one of them."""
    done: List[bool] = []

    def check(ctx: Any) -> List[str]:
        if not done:
            done.append(True)
            worker = threading.Thread(target=lambda: (P.register_kernel("h2_late_kernel", Attn, supports=()),
                                                      P.register_attention("h2_late_attn", Attn)))
            worker.start()
            worker.join(timeout=20)
            assert not worker.is_alive(), "registering while a report runs must not wait for the report"
        return []

    with use_host(_host()):
        P.register_attention("aaa_h2_probe", Attn, check=check)  # first row: checked before the rest
        report = P.registry_report()
        assert done
        attn = {r["name"] for r in report["attention"]}
        kernels = {r["name"] for r in report["kernels"]}
        assert ("h2_late_attn" in attn) == ("h2_late_kernel" in kernels)
        again = P.registry_report()
        assert "h2_late_attn" in {r["name"] for r in again["attention"]}
        assert "h2_late_kernel" in {r["name"] for r in again["kernels"]}


def test_a_name_refused_as_malformed_raises_its_plugins_load_error():
    def hook(registry):
        registry.add("h2_fine", Attn)
        registry.add("h2_malformed", Attn, priority="high")  # not an int: the plugin fails

    with use_host(_host(FakeEntryPoint("h2half", _plugin("h2half", canvas_register_attention=hook)))):
        for name in ("h2_malformed", "h2_fine"):
            with pytest.raises(PluginLoadError) as err:
                P.create_attention(name, d_model=8)
            msg = str(err.value)
            assert "h2half" in msg and "priority must be an int" in msg and name in msg
        assert "h2_fine" not in P.list_attention_types()


def test_what_a_failing_import_registered_is_discarded():
    def import_plugin():
        P.register_attention("h2_imported", Attn)  # a decorator run by the plugin's import
        raise RuntimeError("h2 import exploded after registering")

    with use_host(_host(FakeEntryPoint("h2imp", import_plugin, call=True))):
        assert "h2_imported" not in P.list_attention_types()
        assert "h2_imported" not in P.ATTENTION_REGISTRY
        with pytest.raises(PluginLoadError, match="h2 import exploded") as err:
            P.create_attention("h2_imported", d_model=8)
        assert "h2imp" in str(err.value)
        row = {r["name"]: r for r in P.plugin_report()}["h2imp"]
        assert row["status"] == "failed" and row["registered"] == {}
        assert row["discarded"] == {"attention": ["h2_imported"]}


def test_a_load_cut_short_by_ctrl_c_is_done_again_on_next_access():
    tries: List[int] = []

    def slow_import():
        tries.append(1)
        if len(tries) == 1:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during a slow plugin import
        return _plugin("h2slow", canvas_register_attention=lambda registry: registry.add("h2_slow", Attn))

    later = _plugin("h2later", canvas_register_attention=lambda registry: registry.add("h2_later", Attn))
    with use_host(_host(FakeEntryPoint("h2a", slow_import, call=True), FakeEntryPoint("h2b", later))) as host:
        with pytest.raises(KeyboardInterrupt):
            P.list_attention_types()
        assert not host.loaded
        names = P.list_attention_types()
        assert "h2_slow" in names and "h2_later" in names and "cross_attention" in names
        assert {r["name"]: r["status"] for r in P.plugin_report()} == {"builtin": "ok", "h2a": "ok", "h2b": "ok"}


def test_an_unreadable_entry_points_file_skips_that_distribution_only(site):
    info = site.dist("canvas-plugin-garbled")
    (info / "entry_points.txt").write_text("[canvas]\nthis line is no entry point\n")
    site.plugin("canvas-plugin-h2fine", "h2fine", REGISTERS.format(name="h2_fine_attn", desc="fine"))
    with use_host(PluginHost(allow=["h2fine"])) as host:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            host.ensure_loaded()
        said = [str(w.message) for w in caught if "entry_points.txt" in str(w.message)]
        assert len(said) == 1 and "canvas-plugin-garbled" in said[0] and "Reinstall" in said[0]
        assert "h2_fine_attn" in P.list_attention_types()
        assert host.records["h2fine"].status == "ok"


def test_a_plugin_registering_one_name_twice_is_told_so():
    def hook(registry):
        registry.add("h2_twice", Attn)
        registry.add("h2_twice", Attn)

    with use_host(_host(FakeEntryPoint("h2dup", _plugin("h2dup", canvas_register_attention=hook)))):
        with pytest.raises(DuplicateRegistrationError, match="registered twice by the same plugin"):
            P.get_attention_spec("h2_twice")
        row = {r["name"]: r for r in P.plugin_report()}["h2dup"]
        assert len(row["conflicts"]) == 1 and "same plugin" in row["conflicts"][0]


def test_an_entry_point_naming_a_class_with_hook_methods_says_what_to_do():
    class Hooks:
        def canvas_register_attention(self, registry):
            registry.add("h2_method", Attn)

    with use_host(_host(FakeEntryPoint("h2cls", Hooks))):
        row = {r["name"]: r for r in P.plugin_report()}["h2cls"]
        assert row["status"] == "failed" and "point the entry point at an instance" in row["error"]
    with use_host(_host(FakeEntryPoint("h2obj", Hooks()))):  # the instance works
        assert "h2_method" in P.list_attention_types()


def test_a_plugin_resetting_the_host_while_it_loads_fails_alone():
    """Regression: a hook calling ``reset_plugins()`` wiped the builtins for the whole process."""

    def hook(registry):
        P.reset_plugins()
        registry.add("h2_after_reset", Attn)

    other = _plugin("h2other", canvas_register_attention=lambda registry: registry.add("h2_other", Attn))
    eps = (FakeEntryPoint("h2reset", _plugin("h2reset", canvas_register_attention=hook)),
           FakeEntryPoint("h2other", other))
    with use_host(_host(*eps)):
        names = P.list_attention_types()
        assert "cross_attention" in names and "h2_other" in names and "h2_after_reset" not in names
        row = {r["name"]: r for r in P.plugin_report()}["h2reset"]
        assert row["status"] == "failed" and "reset_plugins()" in row["error"] and "h2reset" in row["error"]
        P.reset_plugins()  # after loading it works as before
        assert "cross_attention" in P.list_attention_types()
