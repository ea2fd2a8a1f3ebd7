"""Execute every ```python block of docs/quickstart.md, in order, in one namespace."""

import re
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("timm")
pytest.importorskip("canvas_plugin_cogvideox")
pytest.importorskip("canvas_plugin_vit")

DOC = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"


def python_blocks(text):
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_quickstart_has_snippets():
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 7
    assert all("canvas_engineering" not in b for b in blocks)


def test_quickstart_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "quickstart"}
    for i, code in enumerate(python_blocks(DOC.read_text())):
        exec(compile(code, f"{DOC.name}[block {i}]", "exec"), ns)
    assert ns["masked"].shape == ns["before"].shape
    assert not __import__("torch").allclose(
        ns["masked"], ns["unmasked"]
    )  # the topology changed the math
    assert tuple(ns["actions"].shape) == (2, 4)
