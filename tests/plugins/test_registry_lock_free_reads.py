"""Readers of a registry take no lock, so a writer must never let them see a state half built.

Regression: removing a registration (``unregister_attention``, ``unregister_plugin``) rebuilt the
registry by emptying it and replaying its log of registrations in place.  A thread that only
looked up a builtin name while another thread registered and unregistered an unrelated name got
``Unknown attention type: 'cross_attention'. Known attention types: (none).`` a few thousand
times in a million lookups.  Each test below runs one writer thread and one reader thread for a
bounded time, with a tiny thread switch interval so the reader is scheduled in the middle of
writes often, and asserts that no read failed or saw a wrong answer.
"""

from __future__ import annotations

import sys
import threading
import time
import types
from typing import Callable, List

import canvas_core.plugins as P
from canvas_core import hookimpl
from canvas_core.plugins import ATTENTION_REGISTRY

BUILTIN = "cross_attention"
TEMP = "lock_free_reads_tmp"
SWITCH_INTERVAL = 1e-6  # seconds between forced GIL hand-overs (the default is 5e-3)


class Mine:
    def __init__(self, d_model, n_heads=4, dropout=0.0):
        self.d_model = d_model


def _race(write_once: Callable[[], None], read_once: Callable[[], None], seconds: float) -> None:
    """Call ``write_once`` in one thread and ``read_once`` in another for ``seconds``; fail with
    the first few errors of either side."""
    stop = threading.Event()
    problems: List[str] = []
    counts = {"reads": 0, "failed": 0, "writes": 0}

    def reader() -> None:
        while not stop.is_set():
            try:
                read_once()
            except Exception as exc:  # noqa: BLE001 - any failure of a read is the bug
                counts["failed"] += 1
                if len(problems) < 3:
                    problems.append(f"read: {exc!r}"[:300])
            counts["reads"] += 1

    def writer() -> None:
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                write_once()
                counts["writes"] += 1
        except Exception as exc:  # noqa: BLE001 - reported below
            problems.append(f"write: {exc!r}"[:300])
        finally:
            stop.set()

    old = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 30)
    finally:
        sys.setswitchinterval(old)
        stop.set()
    assert not any(t.is_alive() for t in threads), "reader or writer thread did not finish"
    assert counts["writes"] > 0 and counts["reads"] > 0, counts
    assert not problems, f"{counts['failed']} of {counts['reads']} reads failed ({counts['writes']} writes): {problems}"


def _read_builtin(host) -> Callable[[], None]:
    """Every lock-free way to read a builtin name that no writer touches."""
    reg = host.registry("attention")
    builtin = reg.get(BUILTIN)

    def read_once() -> None:
        assert host.lookup("attention", BUILTIN) is builtin
        assert BUILTIN in reg
        assert reg.get(BUILTIN) is builtin
        assert ATTENTION_REGISTRY[BUILTIN].spec is builtin
        assert BUILTIN in reg.names()

    return read_once


def test_register_unregister_in_process_never_hides_other_names(host):
    def write_once() -> None:
        P.register_attention(TEMP, Mine)
        P.unregister_attention(TEMP)

    _race(write_once, _read_builtin(host), seconds=2.0)
    assert TEMP not in host.registry("attention")


def test_register_unregister_plugin_never_hides_other_names(host):
    plugin = types.SimpleNamespace(canvas_register_attention=hookimpl(
        lambda registry: registry.add(TEMP, Mine)))

    def write_once() -> None:
        host.register_plugin(plugin, name="lock-free-reads")
        host.unregister_plugin("lock-free-reads")

    _race(write_once, _read_builtin(host), seconds=1.0)
    assert TEMP not in host.registry("attention")


def test_overriding_a_builtin_back_and_forth_always_resolves(host):
    """Override a builtin and unregister the override: a reader of that very name gets one of the
    two registrations every time, never an unknown name."""
    reg = host.registry("attention")
    builtin = reg.get(BUILTIN)

    def write_once() -> None:
        P.register_attention(BUILTIN, Mine, override=True)
        P.unregister_attention(BUILTIN)

    def read_once() -> None:
        got = host.lookup("attention", BUILTIN)
        assert got is builtin or got.factory is Mine, got
        assert BUILTIN in reg

    _race(write_once, read_once, seconds=1.0)
    assert reg.get(BUILTIN) is builtin


def test_views_and_listings_stay_whole_during_writes(host):
    """The listings read the whole registry: each one must come from a single state."""
    reg = host.registry("attention")
    names = set(reg.names())

    def write_once() -> None:
        P.register_attention(TEMP, Mine)
        P.unregister_attention(TEMP)

    def read_once() -> None:
        assert set(reg.names()) - {TEMP} == names
        assert {s.name for s in reg.specs()} - {TEMP} == names
        assert set(ATTENTION_REGISTRY) - {TEMP} == names
        assert len(reg) in (len(names), len(names) + 1)
        assert not reg.conflicts()

    _race(write_once, read_once, seconds=1.0)
