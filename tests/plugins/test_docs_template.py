"""What a plugin author meets, tried as one would: the plugin of docs/plugins.md, built from the
page's own text and installed, passes the page's test template; a type named like a builtin is
never silently shadowed; a misspelt lazy factory or hook is caught by ``canvas plugins``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import canvas_core.plugins as P
from canvas_core.commands import plugins as cmd
from canvas_core.errors import PluginError
from canvas_core.plugins import PluginHost, use_host

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
FILE_BLOCK = re.compile(r"```(?:python|toml)\n# ([\w./-]+\.(?:py|toml))\n(.*?)```", re.S)


def _install(site: Path, root: Path) -> None:
    """What ``pip install -e .`` leaves behind: the package importable from ``site`` and a
    ``.dist-info`` whose entry points are those of the project's pyproject.toml."""
    tomllib = pytest.importorskip("tomllib", reason="reading the docs' pyproject.toml needs Python 3.11+")
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    (site / "my_canvas_plugin").symlink_to(root / "my_canvas_plugin")
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    eps = "".join(f"{k} = {v}\n" for k, v in project["entry-points"]["canvas"].items())
    (info / "entry_points.txt").write_text(f"[canvas]\n{eps}")


def _env(site: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANVAS_")}
    env.update(PYTHONPATH=os.pathsep.join([str(site)] + sys.path), OMP_NUM_THREADS="1", **extra)
    return env


def test_the_docs_plugin_passes_the_docs_test_template(tmp_path):
    pytest.importorskip("torch")
    files = dict(FILE_BLOCK.findall(DOCS.read_text()))
    assert {"my_canvas_plugin/__init__.py", "my_canvas_plugin/retention.py", "pyproject.toml",
            "tests/test_retention.py"} <= set(files), sorted(files)
    root, site = tmp_path / "canvas-plugin-retention", tmp_path / "site"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"# {rel}\n{text}")
    site.mkdir()
    _install(site, root)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_retention.py"],
                         cwd=root, env=_env(site), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "3 passed" in out.stdout


SQUATTER = '''
from canvas_core import hookimpl

@hookimpl
def canvas_register_attention(registry):
    registry.add("cross_attention", "{mod}:Mine", description="my own cross attention")
'''


def test_a_type_named_like_a_builtin_is_refused_loudly(site, capsys):
    mod = site.unique("squat")
    site.plugin("canvas-plugin-squat", "squat", SQUATTER.format(mod=mod))
    with use_host(PluginHost()) as host:
        with pytest.warns(UserWarning, match="canvas-plugin-squat.*refused.*canvas-core") as rec:
            host.ensure_loaded()
        assert "provided twice: by canvas-core" in str(rec[0].message)  # both providers named
        assert P.get_attention_spec("cross_attention").distribution == "canvas-core"
        assert cmd.run(cmd_args()) == 1  # --strict
        text, err = capsys.readouterr()
        assert "CLASH with a builtin" in text and "canvas-plugin-squat" in text
        assert "canvas-plugin-squat" in err  # --strict says why
        import json

        assert cmd.run(cmd_args("--json")) == 1
        doc = json.loads(capsys.readouterr().out)
        assert "canvas-plugin-squat" in doc["shadowed"]["attention"]["cross_attention"][0]  # top level too
        from canvas_core.testing import check_attention_type

        with pytest.raises(PluginError, match="resolves to canvas-core.*canvas-plugin-squat"):
            check_attention_type("cross_attention")
        with pytest.raises(PluginError, match="not to the distribution under test 'canvas-plugin-other'"):
            check_attention_type("pooling", distribution="canvas-plugin-other")
    env = _env(site.path)
    out = subprocess.run([sys.executable, "-m", "canvas_core.cli", "compile"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert "canvas-plugin-squat" in out.stderr and "refused" in out.stderr, out.stderr[-2000:]


def cmd_args(*extra: str):
    import argparse

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    return parser.parse_args(["--device", "cpu", "--strict", *extra])


def test_misspelt_lazy_factory_and_misspelt_unmarked_hook_are_caught(site, capsys):
    site.plugin("canvas-plugin-typo", "typo", '''
from canvas_core import hookimpl

@hookimpl
def canvas_register_attention(registry):
    registry.add("typo_attn", "canvas_core.atention:CrossAttention")

def canvas_register_kernel(registry):     # unmarked and misspelt: no hook under the rule
    registry.add("never", "x.y:Z")
''')
    with use_host(PluginHost()):
        rows = {r["name"]: r for r in P.registry_report()["attention"]}
        assert rows["typo_attn"]["available"] is False and "canvas_core.atention" in rows["typo_attn"]["broken"]
        assert "cross_attention" not in rows or "broken" not in rows["cross_attention"]  # the real ones import
        rec = {r["name"]: r for r in P.plugin_report()}["typo"]
        assert rec["status"] == "ok" and any("misspelt hook 'canvas_register_kernel'" in w
                                             and "canvas_register_kernels" in w for w in rec["warnings"])
        assert "never" not in P.list_kernels()
        assert cmd.run(cmd_args()) == 1
        assert "BROKEN: its factory module 'canvas_core.atention' cannot be found" in capsys.readouterr().out
