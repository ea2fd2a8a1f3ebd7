"""The python examples in docs/clocks.md, docs/masks.md and docs/cortex.md run."""

import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("page", ["clocks.md", "masks.md", "cortex.md"])
def test_doc_examples_run(page):
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, f"{page}", "exec"), {})
