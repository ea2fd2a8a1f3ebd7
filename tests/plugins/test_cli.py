"""`canvas plugins` and `canvas plugins --json`, in-process and as a subprocess."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import canvas_core.plugins as P
from canvas_core.commands import plugins as cmd
from canvas_core.plugins import PluginHost, use_host

BROKEN = 'raise ImportError("cannot import the thing")\n'


def _args(*argv):
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_json_in_process(toy_plugin, site, capsys):
    dist, ep, attn = toy_plugin
    site.plugin("canvas-plugin-crash", "crash", BROKEN, version="0.3")
    with use_host(PluginHost()):
        P.register_attention("needs_cuda", "x.y:Z", devices=("cuda",))
        assert cmd.run(_args("--json", "--device", "cpu")) == 0
        doc = json.loads(capsys.readouterr().out)
        assert cmd.run(_args("--json", "--device", "cpu", "--strict")) == 1  # a plugin failed
        capsys.readouterr()
    plugins = {p["name"]: p for p in doc["plugins"]}
    b = plugins["builtin"]
    assert b["status"] == "ok" and b["distribution"] == "canvas-core"
    assert "cross_attention" in b["registered"]["attention"] and b["registered"]["kernels"] == ["reference"]
    assert set(b["hooks"]) == {"canvas_register_attention", "canvas_register_kernels"}
    t = plugins[ep]
    assert (t["distribution"], t["version"], t["status"]) == (dist, "1.2.3", "ok")
    assert t["registered"] == {"attention": [attn]} and t["hooks"] == ["canvas_register_attention"]
    assert [f["name"] for f in doc["failures"]] == ["crash"]
    c = plugins["crash"]
    assert c["status"] == "failed" and "cannot import the thing" in c["error"]
    assert (c["distribution"], c["version"]) == ("canvas-plugin-crash", "0.3")
    rows = {r["name"]: r for r in doc["registries"]["attention"]}
    assert rows["cross_attention"]["available"] is True and rows[attn]["provider"] == dist
    assert rows["needs_cuda"]["available"] is False and "cuda only" in rows["needs_cuda"]["reasons"][0]
    assert {r["name"] for r in doc["registries"]["kernels"]} >= {"reference"}
    assert set(doc["registries"]) == {"attention", "kernels", "backbones", "identity", "embedders"}
    assert doc["target"] == {"device": "cpu", "dtype": "float32"}


def test_text_in_process(toy_plugin, site, capsys, monkeypatch):
    dist, ep, attn = toy_plugin
    site.plugin("canvas-plugin-crash2", "crash2", BROKEN)
    monkeypatch.setenv("CANVAS_BLOCK_PLUGINS", "crash2")
    with use_host(PluginHost()):
        assert cmd.run(_args("--device", "cpu")) == 0
    out = capsys.readouterr().out
    assert "builtin: canvas-core" in out and f"{ep}: {dist} 1.2.3" in out
    assert "crash2: canvas-plugin-crash2 0.1.0 (entry-point)" in out and "BLOCKED" in out
    assert "block-list crash2" in out
    assert f"attention: {attn}" in out and "registries (availability on cpu/float32)" in out


def test_subprocess_cli_json(toy_plugin, site):
    dist, ep, attn = toy_plugin
    site.plugin("canvas-plugin-crash3", "crash3", BROKEN)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site.path), env.get("PYTHONPATH", "")])
    env.pop("CANVAS_DISABLE_PLUGIN_AUTOLOAD", None)
    proc = subprocess.run([sys.executable, "-m", "canvas_core.cli", "plugins", "--json", "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    plugins = {p["name"]: p for p in doc["plugins"]}
    assert plugins[ep]["status"] == "ok" and plugins[ep]["registered"] == {"attention": [attn]}
    assert plugins["crash3"]["status"] == "failed"
    assert attn in {r["name"] for r in doc["registries"]["attention"]}


def test_strict_says_why_it_fails_on_stderr(toy_plugin, site, capsys):
    site.plugin("canvas-plugin-crash", "crash", BROKEN, version="0.3")
    with use_host(PluginHost()):
        P.register_attention("lost_factory", "canvas_core.no_such_module:Thing")
        assert cmd.run(_args("--json", "--device", "cpu", "--strict")) == 1
        out, err = capsys.readouterr()
    json.loads(out)  # the document alone on stdout
    lines = err.strip().splitlines()
    assert any("plugin 'crash' (canvas-plugin-crash) failed to load" in x and "cannot import the thing" in x
               for x in lines)
    assert any("'lost_factory'" in x and "is broken" in x and "no_such_module" in x for x in lines)
    assert all(x.startswith("canvas plugins --strict: ") for x in lines)
