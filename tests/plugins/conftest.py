"""Fixtures of the plugin-layer tests: isolated plugin hosts and fake installed distributions."""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Dict, Optional

import pytest

from canvas_core.plugins import PluginHost, use_host


@pytest.fixture
def host():
    """A fresh default host with the builtins only (no entry point is even discovered)."""
    h = PluginHost(entry_points=lambda: [])
    with use_host(h):
        yield h


class FakeSite:
    """A directory on ``sys.path`` in which tests 'install' distributions: a ``.dist-info`` with
    ``METADATA`` and ``entry_points.txt`` (exactly what pip writes) plus plain modules."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.modules = []

    def unique(self, stem: str) -> str:
        return f"{stem}_{uuid.uuid4().hex[:8]}"

    def module(self, name: str, source: str) -> str:
        (self.path / f"{name}.py").write_text(textwrap.dedent(source))
        self.modules.append(name)
        importlib.invalidate_caches()
        return name

    def dist(self, name: str, version: str = "0.1.0", entry_points: Optional[Dict[str, str]] = None) -> Path:
        info = self.path / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        eps = "".join(f"{k} = {v}\n" for k, v in (entry_points or {}).items())
        (info / "entry_points.txt").write_text(f"[canvas]\n{eps}")
        (info / "RECORD").write_text("")
        importlib.invalidate_caches()
        return info

    def plugin(self, dist: str, ep_name: str, source: str, version: str = "0.1.0") -> str:
        """A distribution ``dist`` with entry point ``ep_name`` -> a new module holding ``source``."""
        mod = self.module(self.unique(ep_name.replace("-", "_")), source)
        self.dist(dist, version, {ep_name: mod})
        return mod


@pytest.fixture
def site(tmp_path, monkeypatch):
    d = tmp_path / "site"
    d.mkdir()
    monkeypatch.syspath_prepend(str(d))
    s = FakeSite(d)
    yield s
    for m in s.modules:
        sys.modules.pop(m, None)
    importlib.invalidate_caches()


GOOD_PLUGIN = '''
from canvas_core import hookimpl

@hookimpl
def canvas_register_attention(registry):
    registry.add("{name}", "{module}_impl:Attn", family="Toy", complexity="O(NM)",
                 description="toy attention for tests")
'''

TOY_ATTENTION = '''
import torch
from torch import nn

class Attn(nn.Module):
    """Masked mean of projected values (zeros without keys)."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, queries, keys, values, key_mask=None):
        B, Nq, D = queries.shape
        Nk = keys.shape[1]
        m = torch.ones(B, Nq, Nk, dtype=values.dtype, device=values.device)
        if key_mask is not None:
            m = m * key_mask.to(values.dtype).expand(B, Nq, Nk)
        s = torch.softmax(torch.einsum("bqd,bkd->bqk", queries, keys).masked_fill(m == 0, -1e9), -1) * m
        return self.proj(s @ values) * (m.sum(-1, keepdim=True) > 0)
'''


@pytest.fixture
def toy_plugin(site):
    """Install a working plugin distribution; returns (dist name, ep name, attention name)."""
    name = site.unique("toy")
    impl = site.module(f"{name}_mod_impl", TOY_ATTENTION)
    mod = site.module(f"{name}_mod", GOOD_PLUGIN.format(name=name, module=f"{name}_mod"))
    assert impl == f"{mod}_impl"
    dist = f"canvas-plugin-{name.replace('_', '-')}"
    site.dist(dist, "1.2.3", {name: mod})
    return dist, name, name
