"""Shared by the core tests: the obvious references in ``tests/_reference/``.

``dense_reference.py`` (DESIGN.md's canvas attention layer, dense and slow), ``strategies.py``
(hypothesis strategies for random layouts and topologies), ``dependency.py`` (gradient probes
of which inputs an output depends on) and ``toy_types.py`` (small attention types for the tests)
are loaded once, by file path, and registered as the modules ``canvas_ref_dense_reference``,
``canvas_ref_strategies``, ``canvas_ref_dependency`` and ``canvas_ref_toy_types``, so a test
module imports them by name (the tests run with ``--import-mode=importlib``: ``tests`` is not a
package on the path).
"""

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

_HERE = Path(__file__).resolve().parent

# torch.compile keeps compiled graphs on disk (/tmp/torchinductor_<user>) across processes, and its
# cache key does not see the Python implementation of a custom operator: after an operator's code
# changed, a stale entry made test_fused_softmax's compiled gated module fail with the old output
# shape. Each test session compiles into its own folder (a full run collects tests/ first, so the
# plugins' compiled tests get it too), removed at exit.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="canvas-tests-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], True)


def _register(name: str) -> None:
    module_name = f"canvas_ref_{name}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, _HERE / "_reference" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)


for _name in ("dense_reference", "strategies", "dependency", "toy_types"):
    _register(_name)
