"""Review fixes (fx1): ``register_plugin`` / ``missing_name_error`` / ``unregister_plugin`` called
from a thread that a plugin's hook joins raise ``PluginLoadError`` instead of hanging (also after
a nested ``register_plugin`` in a hook); ``from module import *`` of a failed plugin's class raises
``PluginLoadError``; an ``EXTENDED_ARG`` prefix is skipped; snapshots hold copies of the records."""

from __future__ import annotations

import dis
import threading
import time
import types
import warnings
from typing import Any, Callable, List

import pytest

import canvas_core.plugins as P
from canvas_core.errors import PluginLoadError
from canvas_core.plugins import PluginHost, use_host
from tests.plugins._fakes import FakeEntryPoint, Attn, unhung as _unhung


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _joining_hook(work: Callable[[], Any], outcome: List[Any], timed: Any = False) -> Callable[[Any], None]:
    """A hook that runs ``work`` in a thread and joins it with no timeout (``timed``: in the usual
    Ctrl-C-friendly loop of joins with a timeout)."""
    def hook(registry: Any) -> None:
        def worker() -> None:
            try:
                outcome.append(work())
            except Exception as exc:  # noqa: BLE001 - recorded for the test
                outcome.append(exc)

        t = threading.Thread(target=worker, name="fx1-worker")
        t.start()
        while timed and t.is_alive():
            t.join(timeout=0.2)
            if timed == "pauses":
                time.sleep(0.3)  # other work between the joins
        t.join()
        registry.add("fx1_outer_attn", Attn)
    return hook


@pytest.mark.parametrize("timed", [False, True, "pauses"], ids=["join", "join_loop_with_timeouts", "join_loop_with_pauses"])
@pytest.mark.parametrize("call", ["register_plugin", "lookup_unknown", "unregister_plugin", "reset"])
def test_host_methods_from_a_thread_a_hook_joins_raise_instead_of_hanging(call, timed):
    outcome: List[Any] = []
    with use_host(PluginHost(entry_points=lambda: [])) as host:
        host.ensure_loaded()
        work = {"register_plugin": lambda: host.register_plugin(types.ModuleType("fx1other"), "fx1other"),
                "lookup_unknown": lambda: host.lookup("attention", "fx1_nope"),
                "unregister_plugin": lambda: host.unregister_plugin("fx1nothing"),
                "reset": host.reset}[call]
        mod = types.ModuleType("fx1outer")
        mod.canvas_register_attention = P.hookimpl(_joining_hook(work, outcome, timed))
        _unhung(lambda: host.register_plugin(mod, "fx1outer"))
        assert isinstance(outcome[0], PluginLoadError), outcome
        assert "fx1-worker" in str(outcome[0]) and "deadlock" in str(outcome[0])
        assert "fx1_outer_attn" in P.list_attention_types()


def test_a_nested_register_plugin_in_a_hook_keeps_the_outer_hooks_thread_known():
    outcome: List[Any] = []
    with use_host(PluginHost(entry_points=lambda: [])) as host:
        host.ensure_loaded()
        inner = types.ModuleType("fx1inner")
        inner.canvas_register_attention = P.hookimpl(lambda registry: registry.add("fx1_inner_attn", Attn))
        joining = _joining_hook(lambda: P.register_attention("fx1_late", Attn), outcome)

        def hook(registry: Any) -> None:
            host.register_plugin(inner, "fx1inner")  # used to forget the outer hook's thread
            joining(registry)

        outer = types.ModuleType("fx1outer2")
        outer.canvas_register_attention = P.hookimpl(hook)
        _unhung(lambda: host.register_plugin(outer, "fx1outer2"))
        assert isinstance(outcome[0], PluginLoadError) and "deadlock" in str(outcome[0])
        names = P.list_attention_types()
        assert "fx1_inner_attn" in names and "fx1_outer_attn" in names and "fx1_late" not in names


def test_star_import_of_a_failed_plugins_class_raises_its_load_error(monkeypatch):
    import canvas_core.identity

    # an earlier test that read SlotBindingModule left it cached in the module's namespace
    monkeypatch.delitem(vars(canvas_core.identity), "SlotBindingModule", raising=False)

    def broken() -> Any:
        raise RuntimeError("fx1 identity broken")

    eps = [FakeEntryPoint("identity", broken, "canvas-plugin-identity")]
    with use_host(PluginHost(entry_points=lambda: eps)):
        for src in ("from canvas_core.identity import SlotBindingModule", "from canvas_core.identity import *"):
            with pytest.raises(PluginLoadError, match="fx1 identity broken") as ei:
                exec(src, {})
            assert type(ei.value) is PluginLoadError, src  # not the AttributeError of a probe


def test_an_extended_arg_prefix_is_skipped_before_the_naming_instruction():
    from canvas_core._lazy import _names_attribute

    ext, load_attr, call = dis.EXTENDED_ARG, dis.opmap["LOAD_ATTR"], dis.opmap["CALL_FUNCTION" if "CALL_FUNCTION"
                                                                                  in dis.opmap else "CALL"]
    assert _names_attribute(bytes([ext, 1, ext, 2, load_attr, 3]), 0)
    assert _names_attribute(bytes([ext, 1, load_attr, 3]), 2)
    assert not _names_attribute(bytes([ext, 1, call, 3]), 0)
    assert not _names_attribute(bytes([ext, 1]), 0) and not _names_attribute(b"", -1)


def test_a_snapshot_keeps_the_records_as_they_were():
    with use_host(PluginHost(entry_points=lambda: [])) as host:
        mod = types.ModuleType("fx1snap")
        mod.canvas_register_attention = P.hookimpl(lambda registry: registry.add("fx1_snap_attn", Attn))
        host.register_plugin(mod, "fx1snap")
        snap = host.snapshot()
        live = host.records["fx1snap"]
        live.warnings.append("fx1 later")
        live.status, live.error = "failed", "fx1 later failure"
        kept = {r.name: r for r in snap.records}["fx1snap"]
        assert kept is not live and kept.status == "ok" and kept.error is None
        assert "fx1 later" not in kept.warnings
        row = {r["name"]: r for r in host.plugin_report(snap)}["fx1snap"]
        assert row["status"] == "ok" and row["registered"] == {"attention": ["fx1_snap_attn"]}


def test_a_snapshots_records_show_their_conflicts():
    def plugin(name: str) -> Callable[[], Any]:
        mod = types.ModuleType(name)
        mod.canvas_register_attention = P.hookimpl(lambda registry: registry.add("fx1_same", Attn))
        return lambda: mod

    eps = [FakeEntryPoint("fx1a", plugin("fx1a")), FakeEntryPoint("fx1b", plugin("fx1b"))]
    with use_host(PluginHost(entry_points=lambda: eps)) as host:
        live = {r.name: r.conflicts for r in host.records.values()} if host.ensure_loaded() is None else {}
        snap = host.snapshot()
        taken = {r.name: r.conflicts for r in snap.records}
        assert taken == live and any("fx1_same" in c for msgs in taken.values() for c in msgs)
        assert {r.name: r.to_dict()["conflicts"] for r in snap.records} == live


def test_two_separate_timed_waits_are_not_a_deadlock():
    import time

    outcome: List[Any] = []
    with use_host(PluginHost(entry_points=lambda: [])) as host:
        host.ensure_loaded()

        def hook(registry: Any) -> None:
            def worker() -> None:
                try:  # an unknown name takes the host's lock to explain itself
                    outcome.append(host.lookup("attention", "fx1_unknown"))
                except Exception as exc:  # noqa: BLE001 - the test looks at it
                    outcome.append(exc)
            t = threading.Thread(target=worker)
            t.start()
            t.join(timeout=0.2)
            time.sleep(0.5)  # other work: the worker is still blocked on the lock, not refused
            t.join(timeout=0.2)
            registry.add("fx1_two_waits", Attn)

        mod = types.ModuleType("fx1twowaits")
        mod.canvas_register_attention = P.hookimpl(hook)
        _unhung(lambda: host.register_plugin(mod, "fx1twowaits"))
        for _ in range(100):
            if outcome:
                break
            time.sleep(0.05)
        assert outcome and not isinstance(outcome[0], PluginLoadError), outcome  # the unknown-name error
