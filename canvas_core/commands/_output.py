"""What the commands share about their output: plugin prints kept off standard output, and the
``-o`` argument's type.

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


def output_path(text: str) -> Path:
    """The argparse ``type`` of an ``-o`` / ``--output`` file: an empty (or blank) argument is
    refused as such, instead of becoming ``Path('.')``, the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"the output path is empty ({text!r}); give a file name")
    return Path(text)
