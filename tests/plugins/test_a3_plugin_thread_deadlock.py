"""A plugin whose import (or hook) waits with no timeout for a thread that uses the registries: the
wait used to deadlock on the host's load lock; now that thread gets a PluginLoadError naming the
plugin, the plugin is marked failed (its names raise that error) and every other plugin still
loads.  The waits run in a daemon thread watched by the test, so a hang fails instead of hanging."""

from __future__ import annotations

import threading
import types
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, List

import pytest

import canvas_core.plugins as P
from canvas_core.errors import PluginLoadError
from canvas_core.plugins import PluginHost, use_host
from tests.plugins._fakes import FakeEntryPoint, Attn, unhung as _unhung


def _module(name: str, attn: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.canvas_register_attention = P.hookimpl(lambda registry: registry.add(attn, Attn))
    return mod


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_an_import_joining_a_thread_that_reads_the_registry_fails_instead_of_hanging():
    outcome: List[Any] = []

    def worker() -> None:
        try:
            outcome.append(P.list_attention_types())
        except PluginLoadError as exc:
            outcome.append(exc)

    def import_plugin() -> types.ModuleType:
        t = threading.Thread(target=worker, name="a3-registry-reader")
        t.start()
        t.join()  # no timeout: without the fix the two threads wait for each other
        outcome.append("joined")
        return _module("a3join", "a3_join_attn")

    later = _module("a3later", "a3_later_attn")
    with use_host(PluginHost(entry_points=lambda: [FakeEntryPoint("a3join", import_plugin),
                                                   FakeEntryPoint("a3later", lambda: later)])):
        _unhung(P.list_attention_types)
        names = P.list_attention_types()
        assert outcome[-1] == "joined"
        err = outcome[0]
        assert isinstance(err, PluginLoadError), err
        assert "a3-registry-reader" in str(err) and "a3join" in str(err) and "deadlock" in str(err)
        assert "a3_join_attn" not in names and "a3_later_attn" in names and "cross_attention" in names
        row = {r["name"]: r for r in P.plugin_report()}["a3join"]
        assert row["status"] == "failed" and "deadlock" in row["error"] and row["registered"] == {}
        with pytest.raises(PluginLoadError, match="deadlock"):
            P.create_attention("a3_join_attn", d_model=8)


def test_a_hook_waiting_on_an_executor_task_that_registers_fails_instead_of_hanging():
    outcome: List[Any] = []

    def hook(registry: Any) -> None:
        def task() -> None:
            try:
                P.register_attention("a3_from_task", Attn)
            except PluginLoadError as exc:
                outcome.append(exc)

        pool = ThreadPoolExecutor(1)
        try:
            pool.submit(task).result()  # no timeout: without the fix the task and the hook wait for each other
        finally:
            pool.shutdown(wait=False)
        registry.add("a3_pool_attn", Attn)

    mod = types.ModuleType("a3pool")
    mod.canvas_register_attention = P.hookimpl(hook)
    with use_host(PluginHost(entry_points=lambda: [FakeEntryPoint("a3pool", lambda: mod)])):
        _unhung(P.list_attention_types)
        names = P.list_attention_types()
        assert outcome and isinstance(outcome[0], PluginLoadError) and "a3pool" in str(outcome[0])
        assert "a3_pool_attn" not in names and "a3_from_task" not in names
        assert {r["name"]: r["status"] for r in P.plugin_report()}["a3pool"] == "failed"


def test_a_reader_in_another_thread_still_waits_for_a_slow_load():
    started, release = threading.Event(), threading.Event()
    seen: List[Any] = []

    def slow_import() -> types.ModuleType:
        started.set()
        release.wait(10)
        return _module("a3slow", "a3_slow_attn")

    with use_host(PluginHost(entry_points=lambda: [FakeEntryPoint("a3slow", slow_import)])):
        loader = threading.Thread(target=P.list_attention_types)
        loader.start()
        assert started.wait(10)
        reader = threading.Thread(target=lambda: seen.append(P.list_attention_types()))
        reader.start()
        reader.join(0.3)
        assert reader.is_alive()  # waits (the loading thread is not waiting for it)
        release.set()
        loader.join(10)
        reader.join(10)
        assert "a3_slow_attn" in seen[0]


def test_a_registered_plugins_hook_joining_a_registering_thread_fails_that_thread_not_hangs():
    outcome: List[Any] = []

    def hook(registry: Any) -> None:
        def worker() -> None:
            try:
                P.register_attention("a3_manual_late", Attn)
            except PluginLoadError as exc:
                outcome.append(exc)

        t = threading.Thread(target=worker, name="a3-manual-worker")
        t.start()
        t.join()  # no timeout: without the fix the worker waits for the host's lock, held by this hook
        outcome.append(t.is_alive())
        registry.add("a3_manual_attn", Attn)

    mod = types.ModuleType("a3manual")
    mod.canvas_register_attention = P.hookimpl(hook)
    with use_host(PluginHost(entry_points=lambda: [])) as host:
        _unhung(lambda: host.register_plugin(mod, "a3manual"))
        assert outcome[-1] is False and isinstance(outcome[0], PluginLoadError)
        assert "a3-manual-worker" in str(outcome[0]) and "deadlock" in str(outcome[0])
        names = P.list_attention_types()
        assert "a3_manual_attn" in names and "a3_manual_late" not in names


@pytest.mark.parametrize("wait", ["join", "result"])
def test_an_import_waiting_with_a_timeout_for_a_registry_reader_loads_normally(wait):
    """A bounded wait ends on its own: no deadlock, the plugin is not failed (it used to be)."""
    seen: List[Any] = []

    def reader() -> None:
        seen.append(P.list_attention_types())

    def import_plugin() -> types.ModuleType:
        if wait == "join":
            t = threading.Thread(target=reader)
            t.start()
            t.join(timeout=0.3)  # a warm-up thread, not waited for to the end
        else:
            pool = ThreadPoolExecutor(1)
            with pytest.raises(TimeoutError):
                pool.submit(reader).result(timeout=0.3)
            pool.shutdown(wait=False)
        return _module("a3timed", "a3_timed_attn")

    with use_host(PluginHost(entry_points=lambda: [FakeEntryPoint("a3timed", import_plugin)])):
        _unhung(P.list_attention_types)
        assert "a3_timed_attn" in P.list_attention_types()
        row = {r["name"]: r for r in P.plugin_report()}["a3timed"]
        assert row["status"] == "ok" and row["error"] is None, row["error"]
        for _ in range(200):  # the reader finishes once the load is done, with the plugin's name
            if seen:
                break
            threading.Event().wait(0.05)
        assert seen and "a3_timed_attn" in seen[0]
