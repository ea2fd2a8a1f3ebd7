"""A plugin whose import takes long is named on stderr while it runs, with the escape hatches."""

from __future__ import annotations

import importlib
import sys
import uuid
from importlib.metadata import EntryPoint

import pytest

from canvas_core.plugins import PluginHost, use_host
from canvas_core.plugins.loading import slow_load_message, watch_plugin_load

SLOW = '''
import time
time.sleep({sleep})
from canvas_core import hookimpl

@hookimpl
def canvas_register_attention(registry):
    pass
'''


@pytest.fixture
def slow_plugin(tmp_path, monkeypatch):
    name = f"slow_{uuid.uuid4().hex[:8]}"
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(sleep: float) -> EntryPoint:
        (tmp_path / f"{name}.py").write_text(SLOW.format(sleep=sleep))
        importlib.invalidate_caches()
        return EntryPoint(name=name, value=name, group="canvas")

    yield make
    sys.modules.pop(name, None)


def test_slow_import_is_reported_while_it_runs(slow_plugin, monkeypatch, capsys):
    monkeypatch.setenv("CANVAS_PLUGIN_IMPORT_WARN_S", "0.1")
    ep = slow_plugin(0.5)
    host = PluginHost(entry_points=lambda: [ep])
    with use_host(host):
        host.ensure_loaded()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ep.name in line]
    assert lines, err
    assert "still importing after" in lines[0]
    for hatch in ("CANVAS_BLOCK_PLUGINS=" + ep.name, "CANVAS_PLUGINS=", "CANVAS_DISABLE_PLUGIN_AUTOLOAD=1"):
        assert hatch in lines[0]
    rec = host.records[ep.name]
    assert rec.status == "ok" and any("took" in w for w in rec.warnings)


def test_quick_import_says_nothing(slow_plugin, capsys):
    ep = slow_plugin(0)
    host = PluginHost(entry_points=lambda: [ep])
    with use_host(host):
        host.ensure_loaded()
    assert ep.name not in capsys.readouterr().err
    assert not any("took" in w for w in host.records[ep.name].warnings)


def test_blocked_slow_plugin_is_not_imported(slow_plugin, monkeypatch, capsys):
    ep = slow_plugin(30)  # would hang the test if it were imported
    monkeypatch.setenv("CANVAS_BLOCK_PLUGINS", ep.name)
    host = PluginHost(entry_points=lambda: [ep])
    with use_host(host):
        host.ensure_loaded()
    assert host.records[ep.name].status == "blocked" and ep.name not in sys.modules


def test_watch_repeats_with_doubling_waits(monkeypatch, capsys):
    import time

    monkeypatch.setenv("CANVAS_PLUGIN_IMPORT_WARN_S", "0.05")
    notes = []
    with watch_plugin_load("p", "dist-p", "p:mod", notes):
        time.sleep(0.5)  # reports at 0.05, 0.1, 0.2, 0.4 s
    lines = capsys.readouterr().err.strip().splitlines()
    assert 2 <= len(lines) <= 5 and all("plugin 'p' (distribution dist-p" in x for x in lines)
    assert len(notes) == 1
    assert "after 3 s" in slow_load_message("p", None, "p:mod", 3.0)


@pytest.mark.parametrize("raw", ["0", "-1", "soon", "nan", "inf"])
def test_bad_threshold_is_named(monkeypatch, raw):
    from canvas_core.errors import SizeLimitError

    monkeypatch.setenv("CANVAS_PLUGIN_IMPORT_WARN_S", raw)
    with pytest.raises(SizeLimitError, match="CANVAS_PLUGIN_IMPORT_WARN_S"):
        with watch_plugin_load("p", None, "p:mod"):
            pass
