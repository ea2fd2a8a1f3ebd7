"""Testing kit for plugin authors: register a plugin for a test, and conformance suites.

* :func:`registered_plugin`: ``with registered_plugin(my_plugin_module):`` registers a plugin
  object into the default host and removes it (and everything it registered) afterwards.
* ``canvas_plugin``: the same as a pytest fixture (``pytest_plugins = ["canvas_core.testing"]``,
  or ``from canvas_core.testing import canvas_plugin`` in a conftest / test module).
* :func:`check_attention_type`: the conformance suite every attention type passes; it calls the
  type exactly as the canvas runtime does (``canvas_core.runtime.type_call``).
* :func:`check_kernel`: a kernel against the core's dense reference kernel.
* :func:`recording_backend`: a ``torch.compile`` backend that records the calls of the traced
  forward and backward graphs (does the compiled module still run your operator?).
* :func:`one_thread`: a block on one torch CPU thread; ``_one_thread = one_thread_fixture()`` in a
  test module runs each of its tests so.

Importing this package does not import torch (the checks import it when they run).
"""

from __future__ import annotations

import sys

from canvas_core._lazy import lazy_exports
from canvas_core.testing._report import ConformanceReport
from canvas_core.testing.attention import ATTENTION_PROPERTIES, check_attention_type
from canvas_core.testing.compiled import recording_backend
from canvas_core.testing.kernels import check_kernel
from canvas_core.testing.registration import _make_fixture, isolated_plugins, registered_plugin
from canvas_core.testing.threads import one_thread, one_thread_fixture

__all__ = [
    "registered_plugin",
    "isolated_plugins",
    "ConformanceReport",
    "check_attention_type",
    "check_kernel",
    "ATTENTION_PROPERTIES",
    "recording_backend",
    "one_thread",
    "one_thread_fixture",
]

if "pytest" in sys.modules:  # loaded as a pytest plugin or from a test: define the fixture now
    canvas_plugin = _make_fixture()


# `from canvas_core.testing import canvas_plugin` outside pytest builds it on first use
__getattr__, __dir__ = lazy_exports(__name__, {"canvas_plugin": _make_fixture}, globals())
