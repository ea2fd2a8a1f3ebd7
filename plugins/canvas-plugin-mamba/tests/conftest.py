"""The mamba plugin's tests compile into their own inductor cache folder (removed at exit), as the
core tests do (tests/conftest.py): inductor's FX-graph cache key does not see a custom operator's
Python code, so an entry left by an earlier version of an operator could run here."""

import atexit
import os
import shutil
import tempfile

if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="canvas-mamba-tests-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], True)
