"""What the commands share about their arguments and output: plugin prints kept off standard
output, and the argparse types of path arguments (``-o``, ``--out``, an input file).

Torch-free and import-light: every command's ``add_arguments`` may use it.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import ContextManager


def plugin_output_to_stderr() -> ContextManager:
    """A context in which ``print`` goes to standard error.  Commands load plugins and call their
    code (imports, hooks, factories, an embedder's ``embed``) inside it, so that whatever that
    code prints cannot mix into the document the command writes to standard output afterwards
    (``canvas embed s.json > out.json``, ``canvas plugins --json``)."""
    return contextlib.redirect_stdout(sys.stderr)


def _given(text: str, what: str, fix: str) -> Path:
    """``Path(text)``, unless ``text`` is empty or blank: ``Path('')`` is ``Path('.')``, the
    current directory, which would be read or written in place of the missing name."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"the {what} is empty ({text!r}); {fix}")
    return Path(text)


def output_path(text: str) -> Path:
    """The argparse ``type`` of an ``-o`` / ``--output`` file: an empty (or blank) argument is
    refused as such, instead of becoming ``Path('.')``, the current directory."""
    return _given(text, "output path", "give a file name")


def output_folder(text: str) -> Path:
    """The argparse ``type`` of an output folder (``canvas demo --out``): empty or blank refused,
    instead of writing into the current directory."""
    return _given(text, "output folder", "give a folder name (it is created if missing)")


def input_path(text: str) -> Path:
    """The argparse ``type`` of a file (or folder) a command reads: empty or blank refused as
    such, instead of being reported as the current directory ``'.'``, which nobody typed."""
    return _given(text, "input path", "give the path of the file (or folder) to read")
