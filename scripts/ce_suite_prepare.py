"""Prepare a copy of canvas-engineering's tests to run against canvas-core (used by run_ce_suite.sh).

``python scripts/ce_suite_prepare.py SRC_TESTS DST_TESTS``:

* copies every ``*.py`` of SRC_TESTS to DST_TESTS with ``canvas_engineering`` renamed
  ``canvas_core``;
* at module level, names starting with ``_`` imported from ``canvas_core`` (canvas-engineering's
  private helpers, which canvas-core does not reproduce) are replaced by stubs that fail when a
  test uses them, so the rest of the file still runs;
* writes a ``conftest.py`` whose terminal summary sorts the failures: a private helper, a helper
  file absent from the sdist, or a behaviour difference (listed by test id; each is explained in
  docs/migrating.md, "canvas-engineering's test suite").

Nothing is written outside DST_TESTS.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

CONFTEST = '''
import pytest


class PrivateHelperStub:
    """Stands in for a private canvas-engineering helper canvas-core does not have."""

    def __init__(self, module, name):
        self._where = f"{module}.{name}"

    def __call__(self, *args, **kwargs):
        raise ImportError(f"private helper {self._where} is not part of canvas-core (PrivateHelperStub)")

    def __getattr__(self, item):
        raise ImportError(f"private helper {self._where} is not part of canvas-core (PrivateHelperStub)")


def _kind(text):
    if "PrivateHelperStub" in text or "cannot import name '_" in text or "has no attribute '_" in text:
        return "private helper"
    if "No module named 'temporal_fill_harness'" in text:
        return "helper file absent from the sdist"
    return "difference (docs/migrating.md)"


_SEEN = []


def pytest_runtest_logreport(report):
    if report.failed:
        _SEEN.append((report.nodeid, _kind(str(report.longrepr))))


def pytest_collectreport(report):
    if report.failed:
        _SEEN.append((report.nodeid + " (collection)", _kind(str(report.longrepr))))


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    passed = len(tr.stats.get("passed", []))
    tr.section("canvas-engineering suite against canvas-core: tally")
    tr.write_line(f"passed: {passed}")
    kinds = {}
    for nodeid, kind in _SEEN:
        kinds.setdefault(kind, []).append(nodeid)
    for kind, ids in sorted(kinds.items()):
        tr.write_line(f"{kind}: {len(ids)}")
        for nodeid in ids:
            tr.write_line(f"    {nodeid}")
'''


def stub_private_imports(text: str) -> str:
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    edits = []
    for node in tree.body:
        if not (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("canvas_core")):
            continue
        private = [a for a in node.names if a.name.startswith("_")]
        if not private:
            continue
        public = [a for a in node.names if not a.name.startswith("_")]
        new = []
        if public:
            names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in public)
            new.append(f"from {node.module} import ({names})\n")
        new.append("from conftest import PrivateHelperStub\n")
        for a in private:
            new.append(f"{a.asname or a.name} = PrivateHelperStub({node.module!r}, {a.name!r})\n")
        edits.append((node.lineno - 1, node.end_lineno, new))
    for start, stop, new in reversed(edits):
        lines[start:stop] = new
    return "".join(lines)


def main(src: str, dst: str) -> None:
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(Path(src).glob("*.py")):
        text = f.read_text(encoding="utf-8").replace("canvas_engineering", "canvas_core")
        (out / f.name).write_text(stub_private_imports(text), encoding="utf-8")
    (out / "conftest.py").write_text(CONFTEST, encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
