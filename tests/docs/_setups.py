"""The set-ups a docs example can name: ``<!-- docs-test: setup=NAME -->`` on the line before its
```python fence (CONTRIBUTING.md, "Docs examples").

An example that cannot run by itself (it uses the reader's own model, a package the reader
installed, a file of a hypothetical project) names one of these. A set-up is a generator taking
the page's :class:`Context`: the code before its ``yield`` prepares the page namespace (or the
process) for the block, the code after it runs once the block has run (to call what the block
defined, or to check what it did). Every set-up here must be used by some page, and every name a
page uses must be here (tests/docs/test_every_docs_example.py checks both).
"""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import pytest


@dataclass
class Context:
    ns: Dict[str, Any]          # the page namespace: every block of a page runs in it, in order
    tmp_path: Path              # the page's working directory
    monkeypatch: Any            # pytest's monkeypatch: undone when the page's test ends
    page_text: str              # the page's markdown


def tiny_backbone(ctx: Context) -> Iterator[None]:
    """``model``: a small transformer-shaped backbone (``patch_embed``, ``blocks``, ``proj_out``),
    standing in for the reader's own; afterwards, the grafted model still returns exactly what it
    returned before the graft (loops are the identity at initialisation)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.ln, self.fc = nn.LayerNorm(d), nn.Linear(d, d)

        def forward(self, x):
            return x + torch.tanh(self.fc(self.ln(x)))

    class Backbone(nn.Module):
        def __init__(self, d: int = 16, depth: int = 3) -> None:
            super().__init__()
            self.embed_dim = d
            self.patch_embed = nn.Linear(4, d)
            self.blocks = nn.ModuleList(Block(d) for _ in range(depth))
            self.proj_out = nn.Linear(d, 4)

        def forward(self, x):
            h = self.patch_embed(x)
            for block in self.blocks:
                h = block(h)
            return self.proj_out(h)

    torch.manual_seed(0)
    model, x = Backbone(), torch.randn(2, 5, 4)
    with torch.no_grad():
        before = model(x)
    ctx.ns["model"] = model
    yield
    with torch.no_grad():
        assert torch.equal(model(x), before), "the grafted backbone no longer returns its own output"


def canvas_engineering(ctx: Context) -> Iterator[None]:
    """The peer package installed (a dev dependency: ``canvas-engineering==0.5.0``), for a block that
    shows an import of it; afterwards, the names the block rebound come from canvas_core."""
    pytest.importorskip("canvas_engineering", reason="the page's 'before' imports need canvas-engineering")
    yield
    import canvas_core

    assert ctx.ns["ce"] is canvas_core
    assert ctx.ns["Field"] is canvas_core.Field


FILE_BLOCK = re.compile(r"```(?:python|toml)\n# ([\w./-]+\.(?:py|toml))\n(.*?)```", re.S)


def installed_plugin(ctx: Context) -> Iterator[None]:
    """The page's plugin project (its ```python / ```toml blocks whose first line is ``# <path>``)
    written to disk and installed as ``pip install -e .`` would (the package importable, a
    ``.dist-info`` with the pyproject's entry points), with a fresh plugin host that finds it; the
    block is a test file, so afterwards every ``test_*`` function it defined is called."""
    tomllib = pytest.importorskip("tomllib", reason="reading the page's pyproject.toml needs Python 3.11+")
    from canvas_core.plugins import PluginHost, use_host

    files = {rel: text for rel, text in FILE_BLOCK.findall(ctx.page_text) if not rel.startswith("tests/")}
    root, site = ctx.tmp_path / "plugin-project", ctx.tmp_path / "site"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    packages = {rel.split("/")[0] for rel in files if "/" in rel}
    site.mkdir()
    for package in packages:
        (site / package).symlink_to(root / package)
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    eps = "".join(f"{k} = {v}\n" for k, v in project["entry-points"]["canvas"].items())
    (info / "entry_points.txt").write_text(f"[canvas]\n{eps}")
    for var in ("CANVAS_DISABLE_PLUGIN_AUTOLOAD", "CANVAS_PLUGINS", "CANVAS_BLOCK_PLUGINS"):
        ctx.monkeypatch.delenv(var, raising=False)
    ctx.monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    before = set(ctx.ns)
    try:
        with use_host(PluginHost()):
            yield
            tests = [name for name in ctx.ns if name.startswith("test_") and name not in before]
            assert tests, "the block defines no test function"
            for name in tests:
                ctx.ns[name]()
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] in packages]:
            del sys.modules[name]


SETUPS: Dict[str, Callable[[Context], Iterator[None]]] = {
    "tiny-backbone": tiny_backbone,
    "canvas-engineering": canvas_engineering,
    "installed-plugin": installed_plugin,
}
