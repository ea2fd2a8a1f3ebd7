#!/usr/bin/env python3
"""Find docstring and comment text of ours that repeats canvas-engineering's word for word.

canvas-core keeps canvas-engineering's names and signatures, but its prose must be written here.
This script reads every ``.py`` file of both trees, takes the docstrings (module, class, function)
and the ``#`` comments, and compares them two ways:

* lines: each line with its whitespace folded and comment markers removed;
* sentences: each docstring paragraph or comment block joined into one line and cut at ``. ``,
  so that a sentence re-wrapped at other columns is still caught.

Texts are compared after folding case and dropping markup that does not change the words
(backticks, quotes, asterisks, trailing punctuation).  A line or sentence of at least ``--min``
characters (50 by default) found in both trees is reported with its place in ours.  The exit status is 1 when anything is reported.

    python scripts/check_prose.py                       # against the installed canvas_engineering
    python scripts/check_prose.py --theirs DIR --ours canvas_core plugins
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import sys
import tokenize
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

#: folders of this repository whose Python files are ours.
DEFAULT_OURS = ("canvas_core", "plugins", "backends", "tests", "benchmarks", "scripts", "examples")
SKIP_PARTS = {".venv", "__pycache__", "build", "dist", ".git", "site-packages", "node_modules"}

Place = Tuple[str, int]  # (file, line)


def fold(text: str) -> str:
    """Fold whitespace and drop comment markers, so layout differences do not hide a match."""
    text = text.strip().lstrip("#").strip()
    return re.sub(r"\s+", " ", text)


def key(text: str) -> str:
    """The form texts are compared in: folded, lower case, without markup quotes and the
    punctuation at the end."""
    text = re.sub(r"[`'\"*]", "", fold(text).lower())
    return text.rstrip(" .,;:!?")


def _docstrings(tree: ast.AST) -> Iterator[Tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                yield body[0].lineno, body[0].value.value


def _comments(source: str) -> Iterator[Tuple[int, str, bool]]:
    """``(line, text, alone)`` of every comment; ``alone`` when nothing but it is on its line."""
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                yield tok.start[0], tok.string, tok.line.strip().startswith("#")
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return


def prose_blocks(path: Path) -> List[Tuple[int, List[Tuple[int, str]]]]:
    """The prose of one file as blocks (a docstring, or a run of comments on adjacent lines);
    each block is ``(first line, [(line number, raw text), ...])``."""
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    blocks: List[Tuple[int, List[Tuple[int, str]]]] = []
    try:
        tree = ast.parse(source)
    except SyntaxError:
        tree = None
    if tree is not None:
        for lineno, doc in _docstrings(tree):
            blocks.append((lineno, [(lineno + i, line) for i, line in enumerate(doc.splitlines())]))
    run: List[Tuple[int, str]] = []
    for lineno, text, alone in _comments(source):
        if run and (not alone or lineno != run[-1][0] + 1):
            blocks.append((run[0][0], run))
            run = []
        if not alone:  # a comment after code is a block of its own
            blocks.append((lineno, [(lineno, text)]))
            continue
        run.append((lineno, text))
    if run:
        blocks.append((run[0][0], run))
    return blocks


def _sentences(block: List[Tuple[int, str]]) -> Iterator[Tuple[int, str]]:
    """Sentences of a block: paragraphs joined, then cut after ``.``, ``!``, ``?`` or ``:``."""
    para: List[Tuple[int, str]] = []
    for lineno, raw in block + [(0, "")]:
        text = fold(raw)
        if text:
            para.append((lineno, text))
            continue
        if para:
            joined = " ".join(t for _, t in para)
            for sentence in re.split(r"(?<=[.!?:])\s+", joined):
                yield para[0][0], sentence.strip()
            para = []


def collect(roots: Iterable[Path], minimum: int) -> Tuple[Dict[str, Tuple[Place, str]], Dict[str, Tuple[Place, str]]]:
    """``(lines, sentences)``: comparison :func:`key` of texts with at least ``minimum``
    characters -> (first place, folded text)."""
    lines: Dict[str, Tuple[Place, str]] = {}
    sentences: Dict[str, Tuple[Place, str]] = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for path in files:
            if root.is_dir() and SKIP_PARTS & set(path.relative_to(root).parts):
                continue
            for _first, block in prose_blocks(path):
                for lineno, raw in block:
                    text = fold(raw)
                    if len(key(text)) >= minimum:
                        lines.setdefault(key(text), ((str(path), lineno), text))
                for lineno, sentence in _sentences(block):
                    if len(key(sentence)) >= minimum:
                        sentences.setdefault(key(sentence), ((str(path), lineno), sentence))
    return lines, sentences


def installed_canvas_engineering() -> Optional[Path]:
    """Folder of the installed canvas_engineering package, or None."""
    try:
        import canvas_engineering
    except Exception:
        return None
    return Path(canvas_engineering.__file__).parent


def find_repeats(ours: Iterable[Path], theirs: Iterable[Path], minimum: int = 50) -> List[Tuple[Place, str]]:
    """Our places whose prose line or sentence also stands in ``theirs``, sorted by place."""
    our_lines, our_sentences = collect(ours, minimum)
    their_lines, their_sentences = collect(theirs, minimum)
    found: Dict[Place, str] = {}
    for k, (place, text) in our_lines.items():
        if k in their_lines:
            found.setdefault(place, text)
    for k, (place, text) in our_sentences.items():
        if k in their_sentences or k in their_lines:
            found.setdefault(place, text)
    return sorted(((p, t) for p, t in found.items()), key=lambda item: item[0])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ours", nargs="*", type=Path, help="files or folders of ours (default: the repository's)")
    parser.add_argument("--theirs", nargs="*", type=Path, help="canvas-engineering's files or folders "
                        "(default: the installed package)")
    parser.add_argument("--min", type=int, default=50, help="shortest text compared, in characters (50)")
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parent.parent
    ours = args.ours or [repo / d for d in DEFAULT_OURS if (repo / d).exists()]
    theirs = args.theirs
    if not theirs:
        found = installed_canvas_engineering()
        if found is None:
            print("canvas_engineering is not importable; pass --theirs DIR", file=sys.stderr)
            return 2
        theirs = [found]
    repeats = find_repeats(ours, theirs, args.min)
    for (path, lineno), text in repeats:
        try:
            shown = Path(path).resolve().relative_to(repo)
        except ValueError:
            shown = Path(path)
        print(f"{shown}:{lineno}: {text}")
    print(f"{len(repeats)} docstring/comment text(s) of {args.min}+ characters repeat canvas-engineering's",
          file=sys.stderr)
    return 1 if repeats else 0


if __name__ == "__main__":
    sys.exit(main())
