"""Every ```python block of the README and of every page in docs/ runs as written.

Blocks of one page run in order in one namespace (later blocks may use earlier names), in a
fresh working directory.  A block preceded by ``<!-- docs-test: fragment -->`` is an excerpt
(a file of a hypothetical plugin, a line that needs the reader's own model) and is only
compiled, not run.
"""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- docs-test: fragment -->\n)?```python\n(.*?)```", re.S)


def _blocks(page: Path):
    return [(bool(m.group(1)), m.group(2)) for m in BLOCK.finditer(page.read_text())]


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p)], ids=lambda p: p.name)
def test_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # a real module: dataclasses in the examples look their module up in sys.modules
    module = types.ModuleType(f"docs_example_{page.stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    ns = module.__dict__
    for i, (fragment, code) in enumerate(_blocks(page)):
        compiled = compile(code, f"{page.name} (python block {i})", "exec")
        if not fragment:
            exec(compiled, ns)


def test_fragments_stay_rare():
    fragments = [(p.name, i) for p in PAGES for i, (frag, _) in enumerate(_blocks(p)) if frag]
    total = sum(len(_blocks(p)) for p in PAGES)
    assert len(fragments) <= 3, f"too many docs examples are excluded from running: {fragments}"
    assert total >= 30, "the docs lost their runnable examples"


def test_no_page_leaves_files_in_the_repository():
    assert not (ROOT / "robot.json").exists() and os.path.isdir(ROOT / "docs")
