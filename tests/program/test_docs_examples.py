"""Every python example of docs/programs.md runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "programs.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_doc_has_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_example_runs(index, capsys):
    import sys
    import types

    mod = types.ModuleType(f"programs_doc_example_{index}")
    sys.modules[mod.__name__] = mod
    try:
        exec(compile(BLOCKS[index], f"{DOC.name}[{index}]", "exec"), mod.__dict__)
    finally:
        del sys.modules[mod.__name__]
    out = capsys.readouterr().out
    # where the example shows its output as comments right after a print, compare it
    expected = [line[2:] for line in BLOCKS[index].splitlines() if line.startswith("# ")]
    if index == 0:
        assert out.splitlines() == ["observation", "deterministic"] + expected
    if "validate_constraints(program))" in BLOCKS[index]:
        assert eval(out) == eval("".join(expected))
