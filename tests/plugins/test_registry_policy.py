"""The plugin layer's pieces on their own: the registry's clash policy, the environment settings
(blocking through pluggy's own block-list), discovery helpers and the CUDA probe."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from canvas_core.errors import CanvasError, DuplicateRegistrationError, PluginError, SettingError, SpecError
from canvas_core import devices
from canvas_core.plugins import PluginHost
from canvas_core.plugins.loading import (
    ENV_ALLOW, ENV_BLOCK, ENV_DISABLE, discover_entry_points, entry_point_ids, env_flag, read_settings,
)
from canvas_core.plugins.registry import BUILTIN_PLUGIN, Registry
from canvas_core.plugins.spec import Spec


def _spec(name: str, plugin: str) -> Spec:
    return Spec(name=name, factory=dict, kind="attention", distribution=f"dist-{plugin}", plugin=plugin)


def test_plain_clash_between_plugins_is_ambiguous_whatever_the_order():
    for first, second in (("a", "b"), ("b", "a")):
        reg = Registry("attention")
        assert reg.add_from_plugin(_spec("x", first)) == (reg.get("x"), None)
        stored, clash = reg.add_from_plugin(_spec("x", second))
        assert stored is None and isinstance(clash, DuplicateRegistrationError)
        with pytest.raises(DuplicateRegistrationError, match="provided twice"):
            reg.get("x")  # neither is picked silently
        assert "x" in reg.conflicts()


@pytest.mark.parametrize("override_first", [True, False])
def test_override_wins_over_a_plain_registration_in_either_order(override_first):
    reg = Registry("attention")
    plain, over = _spec("x", "plain"), _spec("x", "over")
    if override_first:
        assert reg.add_from_plugin(over, override=True)[0] is over
        assert reg.add_from_plugin(plain) == (plain, None)  # kept below, not a clash
    else:
        reg.add_from_plugin(plain)
        assert reg.add_from_plugin(over, override=True) == (over, None)
    assert reg.get("x") is over and reg.conflicts() == {}
    reg.remove("x")
    assert reg.get("x") is plain  # the overridden one comes back


def test_two_overrides_clash_and_a_builtin_survives_a_plain_clash():
    reg = Registry("attention")
    reg.add_from_plugin(_spec("x", "a"), override=True)
    stored, clash = reg.add_from_plugin(_spec("x", "b"), override=True)
    assert stored is None and "neither is chosen" in str(clash)
    with pytest.raises(DuplicateRegistrationError):
        reg.get("x")

    reg = Registry("attention")
    builtin = _spec("y", BUILTIN_PLUGIN)
    reg.add_from_plugin(builtin)
    stored, clash = reg.add_from_plugin(_spec("y", "c"))
    assert stored is None and clash is not None and reg.get("y") is builtin and reg.conflicts() == {}
    assert "dist-builtin" in reg.shadowed()["y"][0] and "dist-c" in reg.shadowed()["y"][0]  # both named


def test_strict_registration_raises_and_changes_nothing():
    reg = Registry("attention")
    first = _spec("x", "a")
    reg.add_from_plugin(first)
    with pytest.raises(DuplicateRegistrationError):
        reg.add_from_plugin(_spec("x", "b"), strict=True)
    assert reg.get("x") is first and reg.names_by_plugin("a") == ["x"] and reg.names_by_plugin("b") == []


def test_an_unknown_registry_kind_names_it_and_the_valid_ones():
    for make in (lambda: Registry("bogus"), lambda: PluginHost(entry_points=lambda: []).registry("bogus")):
        with pytest.raises(SpecError, match=r"'bogus'.*attention, kernels, backbones, identity, embedders") as ei:
            make()
        assert isinstance(ei.value, CanvasError) and isinstance(ei.value, ValueError)
        assert isinstance(ei.value, PluginError)  # what the host raised before


def test_settings_arguments_win_over_the_environment():
    env = {ENV_DISABLE: "0", ENV_ALLOW: "Canvas_Plugin-A; b", ENV_BLOCK: "c"}
    s = read_settings(env)
    assert s == {"autoload": True, "allow": ["canvas-plugin-a", "b"], "block": ["c"]}
    assert read_settings(env, autoload=False, allow=[])["autoload"] is False
    assert read_settings(env, allow=[])["allow"] is None  # an empty list allows everything
    with pytest.raises(PluginError, match="not a boolean") as ei:
        read_settings({ENV_DISABLE: "maybe"})
    assert isinstance(ei.value, SettingError) and isinstance(ei.value, ValueError)


def test_a_bad_boolean_setting_outside_plugin_loading_is_a_setting_error():
    with pytest.raises(SettingError, match=r"CANVAS_COMPILE_TRACE_TYPES='maybe'.*1 \(or true/yes/on\)") as ei:
        env_flag({"CANVAS_COMPILE_TRACE_TYPES": "maybe"}, "CANVAS_COMPILE_TRACE_TYPES")
    err = ei.value
    assert isinstance(err, CanvasError) and isinstance(err, ValueError) and not isinstance(err, PluginError)


def test_blocking_goes_through_pluggys_block_list():
    dist = SimpleNamespace(name="canvas-plugin-c", version="1.0")
    eps = [SimpleNamespace(name=n, value="no_such_module_xyz", dist=dist) for n in ("c", "d")]
    host = PluginHost(entry_points=lambda: eps, environ={ENV_BLOCK: "C", ENV_ALLOW: "c,canvas-plugin-c"})
    pm = host.plugin_manager
    assert pm.is_blocked("c") and not pm.is_blocked("builtin") and pm.has_plugin("builtin")
    assert (host.records["c"].status, host.records["c"].error) == ("blocked", f"blocked by {ENV_BLOCK}")
    assert host.records["d"].status == "failed"  # allowed (its dist is listed), then its import fails
    host = PluginHost(entry_points=lambda: eps, environ={ENV_ALLOW: "c"})
    assert host.plugin_manager.is_blocked("d")
    assert (host.records["d"].status, host.records["d"].error) == ("blocked", f"not in the allow-list {ENV_ALLOW}")
    host = PluginHost(entry_points=lambda: eps, environ={ENV_DISABLE: "1"})
    host.ensure_loaded()
    assert host.records["c"].status == "disabled" and host.records["c"].error == f"{ENV_DISABLE} is set"


def test_discovery_drops_repeats_and_sorts():
    dist = SimpleNamespace(name="Canvas_Plugin_Z", version="1.0")
    ep = lambda name, value: SimpleNamespace(name=name, value=value, dist=dist)  # noqa: E731
    found = discover_entry_points(lambda: [ep("z", "m:z"), ep("a", "m:a"), ep("z", "m:z")])
    assert [e.name for e in found] == ["a", "z"]
    assert entry_point_ids(found[1]) == {"z", "canvas-plugin-z"}


def test_cuda_probe_never_imports_torch(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(devices.importlib.util, "find_spec", lambda name: None)
    assert devices.cuda_status() is False and devices.cuda_device_count() == 0  # not installed
    monkeypatch.setattr(devices.importlib.util, "find_spec", lambda name: object())
    assert devices.cuda_status() is None  # installed, not loaded: unknown, and still not imported
    assert "torch" not in sys.modules
    fake = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: True, device_count=lambda: 3))
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert devices.cuda_status() is True and devices.cuda_device_count() == 3
