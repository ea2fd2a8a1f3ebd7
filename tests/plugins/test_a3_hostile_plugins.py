"""Plugins whose errors are themselves hostile: an exception whose ``str()`` raises used to crash
every registry access (and ``canvas plugins``) with a traceback; a message of megabytes was
copied whole into every listing and error."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

import canvas_core.plugins as P
from canvas_core.commands.plugins import _text, collect
from canvas_core.errors import FactoryError, PluginLoadError
from canvas_core.plugins import PluginHost, use_host
from tests.plugins._fakes import FakeEntryPoint


class Nasty(Exception):
    def __str__(self) -> str:
        raise ValueError("a3: str() of this error fails")


def _raising(exc: BaseException) -> Any:
    def load() -> Any:
        raise exc
    return load


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_a_plugin_error_whose_str_raises_fails_that_plugin_only():
    eps = [FakeEntryPoint("a3nasty", _raising(Nasty())), FakeEntryPoint("a3huge", _raising(RuntimeError("x" * 1_000_000)))]
    with use_host(PluginHost(entry_points=lambda: eps)):
        assert "cross_attention" in P.list_attention_types()  # used to raise ValueError from str()
        rows = {r["name"]: r for r in P.plugin_report()}
        assert rows["a3nasty"]["status"] == "failed"
        assert "Nasty: <its message cannot be shown: str() raised ValueError>" in rows["a3nasty"]["error"]
        huge = rows["a3huge"]["error"]
        assert len(huge) < 3000 and huge.endswith("(1,000,000 characters in all)")
        assert len(_text(collect())) < 20_000
        with pytest.raises(PluginLoadError, match="cannot be shown"):
            P.create_attention("a3nasty", d_model=8)


def test_a_factory_raising_such_an_error_is_still_a_factory_error():
    def factory(**kwargs: Any) -> Any:
        raise Nasty()

    with use_host(PluginHost(entry_points=lambda: [])):
        P.register_attention("a3_nasty_factory", factory)
        with pytest.raises(FactoryError, match="raised Nasty: <its message cannot be shown"):
            P.create_attention("a3_nasty_factory", d_model=8)
