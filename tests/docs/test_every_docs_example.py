"""Every ```python block of the README, CONTRIBUTING.md, every page in docs/ and every plugin or
backend README runs as written.

Blocks of one page run in order in one namespace (later blocks may use earlier names), in a
fresh working directory. A block that cannot run by itself (the reader's own model, a file of a
hypothetical plugin) names the set-up it needs on the line before its fence,
``<!-- docs-test: setup=NAME -->``; the set-ups are defined once, in ``tests/docs/_setups.py``.
Nothing is only compiled: every block runs. Where a page shows what its examples print, the
page's check in ``tests/docs/_page_checks.py`` compares it with the run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import types
from pathlib import Path

import pytest

from canvas_core.testing import isolated_plugins

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md")),
         *sorted(ROOT.glob("plugins/*/README.md")), *sorted(ROOT.glob("backends/*/README.md"))]
BLOCK = re.compile(r"(?:<!-- docs-test: setup=([\w-]+) -->\n)?```python\n(.*?)```", re.S)
MARKER = re.compile(r"^<!-- docs-test:(.*?)-->", re.M)  # a marker starts its line


def _load(name: str):
    """A helper module of this folder, by file path (the tests are not a package)."""
    module_name = f"canvas_docs_{name.strip('_')}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


setups, page_checks = _load("_setups"), _load("_page_checks")


def _blocks(page: Path):
    """``[(setup name or None, code)]`` of the page's python blocks, in order."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(page.read_text())]


def _page_id(page: Path) -> str:
    """The page's file name; a plugin's README by its path (every distribution has one)."""
    return page.name if page.parent in (ROOT, ROOT / "docs") else str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p)], ids=_page_id)
def test_page_examples_run(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # a real module: dataclasses in the examples look their module up in sys.modules
    module = types.ModuleType(f"docs_example_{page.stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    ns = module.__dict__
    text = page.read_text()
    ctx = setups.Context(ns=ns, tmp_path=tmp_path, monkeypatch=monkeypatch, page_text=text)
    codes, outputs = [], []
    # a fresh default plugin host per page (it loads the installed plugins, as a new process
    # would): what a page registers in-process does not outlive the page
    with isolated_plugins():
        for i, (setup, code) in enumerate(_blocks(page)):
            compiled = compile(code, f"{page.name} (python block {i})", "exec")
            if setup and setup not in setups.SETUPS:  # not a bare KeyError: say where and what exists
                pytest.fail(f"{page.name} python block {i}: '<!-- docs-test: setup={setup} -->' names no "
                            f"set-up of tests/docs/_setups.py (defined: {sorted(setups.SETUPS)}); define it "
                            "there or fix the name", pytrace=False)
            with contextlib.contextmanager(setups.SETUPS[setup])(ctx) if setup else contextlib.nullcontext():
                exec(compiled, ns)
            codes.append(code)
            outputs.append(capsys.readouterr().out)
        check = page_checks.CHECKS.get(page.name)
        if check is not None:
            check(page_checks.PageRun(text=text, blocks=codes, outputs=outputs, ns=ns))


def test_every_marker_names_a_known_setup_and_every_setup_is_used():
    used = set()
    for page in PAGES:
        text = page.read_text()
        for marker in MARKER.findall(text):
            assert re.fullmatch(r" setup=[\w-]+ ", marker), (
                f"{page.name}: '<!-- docs-test:{marker}-->' is not '<!-- docs-test: setup=NAME -->'")
        named = [s for s, _ in _blocks(page) if s]
        assert len(named) == len(MARKER.findall(text)), f"{page.name}: a setup marker is not right before a ```python fence"
        unknown = set(named) - set(setups.SETUPS)
        assert not unknown, f"{page.name} names set-ups not defined in tests/docs/_setups.py: {sorted(unknown)}"
        used |= set(named)
    assert used == set(setups.SETUPS), f"set-ups no page uses: {sorted(set(setups.SETUPS) - used)}"


def test_a_page_naming_an_unknown_setup_fails_saying_so(tmp_path, monkeypatch, capsys):
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n<!-- docs-test: setup=no-such-setup -->\n```python\nx = 1\n```\n")
    with pytest.raises(pytest.fail.Exception, match=r"page.md python block 0: .*setup=no-such-setup.* names no "
                       r"set-up of tests/docs/_setups.py \(defined: \['canvas-engineering'"):
        test_page_examples_run(page, tmp_path, monkeypatch, capsys)


def test_the_docs_keep_their_examples_and_checked_pages():
    total = sum(len(_blocks(p)) for p in PAGES)
    assert total >= 30, "the docs lost their runnable examples"
    for name in page_checks.CHECKS:
        page = ROOT / "docs" / name
        assert page.exists() and _blocks(page), f"{name} has a page check but no python example"


def test_no_page_leaves_files_in_the_repository():
    assert not (ROOT / "robot.json").exists() and os.path.isdir(ROOT / "docs")


def test_a_page_leaves_no_registration_behind(tmp_path, monkeypatch, capsys):
    """plugins.md registers ``my_attn`` in-process; later tests listing the types must not see it
    (test_verify_structure built every listed type and failed on it)."""
    from canvas_core import list_attention_types

    page = ROOT / "docs" / "plugins.md"
    assert '@register_attention("my_attn"' in page.read_text()
    test_page_examples_run(page, tmp_path, monkeypatch, capsys)
    assert "my_attn" not in list_attention_types()
