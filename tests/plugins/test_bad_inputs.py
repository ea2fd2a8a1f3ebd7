"""Reliability: bad registrations, factories, plugin hooks and environment values (regressions)."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import canvas_core
from canvas_core.errors import CanvasError, CanvasTypeError, PluginError
from canvas_core.plugins import (
    ENV_ALLOW,
    ENV_DISABLE,
    PluginHost,
    RuntimeContext,
    create_attention,
    register_attention,
)
from canvas_core.plugins.spec import FactoryError, SpecError
from canvas_core.testing import check_attention_type, isolated_plugins


def _factory(d_model, n_heads=4, dropout=0.0):
    return ("built", d_model)


@pytest.mark.parametrize("meta, match", [
    ({"devices": [3]}, "devices"),
    ({"devices": ("tpu",)}, "unknown device 'tpu'"),
    ({"dtypes": ("float99",)}, "unknown dtype 'float99'"),
    ({"dtypes": ("bf16",)}, None),            # alias: accepted
    ({"requires": [3]}, "requires"),
    ({"family": 3}, "family"),
    ({"complexity": [1]}, "complexity"),
    ({"override": "yes"}, "override"),
])
def test_register_validates_metadata(meta, match):
    with isolated_plugins(autoload=False):
        if match is None:
            spec = register_attention("x_ok", _factory, **meta)
            assert spec.dtypes == ("bfloat16",)
            return
        with pytest.raises(CanvasError, match=match) as ei:
            register_attention("x_bad", _factory, **meta)
        assert "x_bad" in str(ei.value)


def test_factory_exception_is_wrapped_naming_the_type_and_cause():
    def boom(d_model, n_heads=4, dropout=0.0):
        raise RuntimeError("inner failure")

    def bad_value(d_model, n_heads=4, dropout=0.0):
        raise ValueError("bad width")

    with isolated_plugins(autoload=False):
        register_attention("boom", boom)
        register_attention("bad_value", bad_value)
        with pytest.raises(FactoryError, match=r"'boom'.*RuntimeError: inner failure") as ei:
            create_attention("boom", d_model=8)
        assert isinstance(ei.value.__cause__, RuntimeError)
        with pytest.raises(ValueError, match="bad width"):  # still a ValueError for old callers
            create_attention("bad_value", d_model=8)
        with pytest.raises(CanvasError):
            create_attention("bad_value", d_model=8)


def test_canvas_error_of_a_factory_passes_through_unchanged():
    with pytest.raises(canvas_core.errors.ShapeError, match="not divisible"):
        create_attention("cross_attention", d_model=30, n_heads=4)


def test_plugin_whose_hook_raises_gives_plugin_error_and_keeps_nothing():
    class Exploding:
        @canvas_core.hookimpl
        def canvas_register_attention(self, registry):
            registry.add("half_registered", _factory)
            raise RuntimeError("hook exploded")

    with isolated_plugins(autoload=False) as host:
        with pytest.raises(PluginError, match=r"'exploder'.*hook exploded") as ei:
            host.register_plugin(Exploding(), "exploder")
        assert isinstance(ei.value.__cause__, RuntimeError)
        assert "half_registered" not in host.registry("attention")
        assert "exploder" not in host.records


@pytest.mark.parametrize("plugin", [None, 3, object()])
def test_register_plugin_without_hooks_is_refused(plugin):
    with isolated_plugins(autoload=False) as host:
        with pytest.raises(PluginError, match="implements no canvas hook"):
            host.register_plugin(plugin, "nohooks")
        assert "nohooks" not in host.records


def test_misspelt_hook_is_named_in_the_refusal():
    class Typo:
        @canvas_core.hookimpl
        def canvas_register_attentoin(self, registry):
            pass

    with isolated_plugins(autoload=False) as host, \
            pytest.raises(PluginError, match="did you mean 'canvas_register_attention'"):
        host.register_plugin(Typo(), "typo")


@pytest.mark.parametrize("kw, match", [
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"device": "cuda:x"}, "unknown device"),
    ({"device": 3}, "device must be"),
    ({"dtype": "float99"}, "unknown dtype"),
    ({"dtype": 3}, "dtype must be"),
    ({"head_dim": 0}, "head_dim"),
    ({"head_dim": "8"}, "head_dim"),
    ({"requires_grad": "yes"}, "requires_grad"),
])
def test_runtime_context_validates(kw, match):
    with pytest.raises(CanvasError, match=match):
        RuntimeContext(**kw)


def test_runtime_context_accepts_the_documented_forms():
    import torch

    for kw in ({"device": "cuda:0"}, {"device": torch.device("cpu")}, {"dtype": torch.bfloat16},
               {"dtype": "fp16"}, {"head_dim": 64, "requires_grad": False}):
        RuntimeContext(**kw)
    with pytest.raises(CanvasTypeError, match="unknown key"):
        RuntimeContext.coerce({"devcie": "cpu"})


def test_bad_boolean_environment_value_is_an_error_and_retried(monkeypatch):
    monkeypatch.setenv(ENV_DISABLE, "maybe")
    host = PluginHost()
    with pytest.raises(PluginError, match=f"{ENV_DISABLE}='maybe' is not a boolean"):
        host.registry("attention")
    monkeypatch.setenv(ENV_DISABLE, "0")
    assert "cross_attention" in host.registry("attention")  # not left half-loaded


@pytest.mark.parametrize("value, autoload", [("1", False), ("true", False), ("off", True), ("", True)])
def test_boolean_environment_values(monkeypatch, value, autoload):
    monkeypatch.setenv(ENV_DISABLE, value)
    host = PluginHost()
    host.ensure_loaded()
    assert host.settings["autoload"] is autoload


def test_allow_list_naming_no_installed_plugin_warns(monkeypatch):
    monkeypatch.setenv(ENV_ALLOW, "no-such-plugin-zz")
    host = PluginHost(entry_points=list)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        host.ensure_loaded()
    assert any("no-such-plugin-zz" in str(w.message) and ENV_ALLOW in str(w.message) for w in rec)


@pytest.mark.parametrize("kw, exc, match", [
    ({"name": "no_such_type_zz"}, canvas_core.errors.UnknownNameError, "no_such_type_zz"),
    ({"name": 3}, CanvasTypeError, "registered name or a factory"),
    ({"name": "cross_attention", "dtype": "float99"}, SpecError, "unknown dtype"),
    ({"name": "cross_attention", "device": "tpu"}, SpecError, "unknown device"),
    ({"name": "cross_attention", "d_model": 0}, CanvasTypeError, "d_model"),
    ({"name": "cross_attention", "n_heads": -1}, CanvasTypeError, "n_heads"),
])
def test_check_attention_type_bad_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        check_attention_type(**kw)


@settings(max_examples=30, deadline=None)
@given(key=st.sampled_from(["requires", "devices", "dtypes", "family", "complexity", "priority",
                            "supports", "check", "description"]),
       value=st.one_of(st.none(), st.integers(), st.text(max_size=4), st.lists(st.integers(), max_size=2),
                       st.lists(st.text(max_size=3), max_size=2), st.floats(allow_nan=True)))
def test_registration_metadata_never_raises_anything_but_canvas_errors(key, value):
    with isolated_plugins(autoload=False):
        try:
            register_attention("fuzzed", _factory, **{key: value})
        except CanvasError:
            pass
