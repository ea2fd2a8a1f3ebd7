"""Naming a plugin whose import (or registration) takes long, while it runs.

A plugin that imports a heavy package, or hangs on a network mount, would otherwise freeze every
registry access (``canvas compile``, building a layer) with no word of the cause. While the host
loads an installed plugin, :func:`watch_plugin_load` runs a timer: after
``CANVAS_PLUGIN_IMPORT_WARN_S`` seconds (default 5, see docs/limits.md) it writes one line to
stderr naming the plugin and the environment variables that skip it, and again each time the
wait doubles. The plugin keeps loading: a slow plugin is reported, never killed.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, List, Optional

from canvas_core.plugins.settings import ENV_ALLOW, ENV_BLOCK, ENV_DISABLE
from canvas_core.schema.limits import limit

__all__ = ["watch_plugin_load", "slow_load_message"]


def slow_load_message(name: str, dist: Optional[str], value: str, seconds: float) -> str:
    """The line written for plugin ``name`` still loading after ``seconds``."""
    src = f" (distribution {dist}, entry point {value!r})" if dist else f" (entry point {value!r})"
    return (f"canvas-core: plugin {name!r}{src} is still importing after {seconds:.0f} s. To skip it, set "
            f"{ENV_BLOCK}={name}, or list only the plugins you need in {ENV_ALLOW}=a,b, or set "
            f"{ENV_DISABLE}=1 to load no installed plugin")


@contextmanager
def watch_plugin_load(name: str, dist: Optional[str], value: str,
                      notes: Optional[List[str]] = None) -> Iterator[None]:
    """Report plugin ``name`` on stderr while the body runs longer than the limit; afterwards,
    when it was slow, append a note with the time it took to ``notes`` (the plugin's warnings)."""
    first = float(limit("plugin_import_s"))
    done = threading.Event()
    start = time.monotonic()

    def watch() -> None:
        wait = first
        while not done.wait(max(0.0, start + wait - time.monotonic())):
            try:
                sys.stderr.write(slow_load_message(name, dist, value, time.monotonic() - start) + "\n")
                sys.stderr.flush()
            except Exception:  # a closed stderr must not raise in this thread
                pass
            wait *= 2

    thread = threading.Thread(target=watch, name=f"canvas-plugin-watch-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        took = time.monotonic() - start
        if notes is not None and took >= first:
            notes.append(f"loading it took {took:.1f} s (reported after CANVAS_PLUGIN_IMPORT_WARN_S={first:g} s); "
                         "import heavy packages inside the lazy factories, not at registration")
