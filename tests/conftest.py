"""Shared by the core tests: the obvious references in ``tests/_reference/``.

``dense_reference.py`` (DESIGN.md's canvas attention layer, dense and slow), ``strategies.py``
(hypothesis strategies for random layouts and topologies) and ``dependency.py`` (gradient probes
of which inputs an output depends on) are loaded once, by file path, and registered as the modules
``canvas_ref_dense_reference``, ``canvas_ref_strategies`` and ``canvas_ref_dependency``, so a test
module imports them by name (the tests run with ``--import-mode=importlib``: ``tests`` is not a
package on the path).
"""

import importlib.util
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _register(name: str) -> None:
    module_name = f"canvas_ref_{name}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, _HERE / "_reference" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)


for _name in ("dense_reference", "strategies", "dependency"):
    _register(_name)
