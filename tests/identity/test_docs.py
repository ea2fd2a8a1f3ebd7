"""Every python example of docs/identity.md, docs/canvit.md and docs/state_space.md runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("canvas_plugin_identity")
pytest.importorskip("canvas_plugin_canvit")

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = ("identity.md", "canvit.md", "state_space.md")
EXAMPLES = [(page, i, code) for page in PAGES
            for i, code in enumerate(re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S))]


def test_every_page_has_examples():
    assert {p for p, _, _ in EXAMPLES} == set(PAGES)


@pytest.mark.parametrize("page, index, code", EXAMPLES, ids=[f"{p}#{i}" for p, i, _ in EXAMPLES])
def test_doc_example_runs(page, index, code, capsys):
    exec(compile(code, f"{page}#{index}", "exec"), {"__name__": "__doc_example__"})
