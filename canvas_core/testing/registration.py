"""Registering a plugin for the length of a block or a test (context managers and the fixture)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, List, Optional

from canvas_core.plugins.host import PluginHost, PluginRecord, get_host

__all__ = ["registered_plugin", "isolated_plugins"]


@contextlib.contextmanager
def registered_plugin(plugin: Any, name: Optional[str] = None, *, distribution: Optional[str] = None,
                      version: str = "", host: Optional[PluginHost] = None) -> Iterator[PluginRecord]:
    """Register ``plugin`` (a module or object with ``@hookimpl`` functions) for a block.

    Its hooks run at once; an error in them (or a name clash) is raised.  On exit the plugin and
    everything it registered are removed, and any registration it overrode comes back.
    Yields the :class:`~canvas_core.plugins.host.PluginRecord`.
    """
    host = host or get_host()
    rec = host.register_plugin(plugin, name, distribution=distribution, version=version)
    try:
        yield rec
    finally:
        host.unregister_plugin(rec.name)


@contextlib.contextmanager
def isolated_plugins(**host_kwargs: Any) -> Iterator[PluginHost]:
    """Run a block against a fresh default :class:`PluginHost` (``host_kwargs`` passed to it:
    ``autoload=False``, ``allow=[...]``, ``block=[...]``, ``entry_points=callable``); the previous
    default host comes back afterwards, untouched."""
    from canvas_core.plugins.host import use_host

    with use_host(PluginHost(**host_kwargs)) as host:
        yield host


def _make_fixture():
    import pytest

    @pytest.fixture
    def canvas_plugin():
        """Fixture: ``canvas_plugin(obj, name=None, distribution=None)`` registers a plugin object
        into the default host for the test; all are removed at teardown."""
        host = get_host()
        names: List[str] = []

        def register(plugin: Any, name: Optional[str] = None, **kw: Any) -> PluginRecord:
            rec = host.register_plugin(plugin, name, **kw)
            names.append(rec.name)
            return rec

        yield register
        for n in reversed(names):
            host.unregister_plugin(n)

    return canvas_plugin
