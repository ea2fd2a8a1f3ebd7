"""Run a block, or every test of a module, on one torch CPU thread.

Tests on tiny tensors gain nothing from intra-op threads, and on a shared machine the threads of
several test processes only contend with each other.  ``one_thread()`` is the context manager;
``one_thread_fixture()`` builds the pytest fixture a test module assigns to a name of its own::

    from canvas_core.testing import one_thread_fixture

    _one_thread = one_thread_fixture()  # every test of this module runs on one thread

Torch and pytest are imported when these are used, not when ``canvas_core.testing`` is.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

__all__ = ["one_thread", "one_thread_fixture"]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Set torch's intra-op threads to 1 for the block; the previous count comes back after it,
    also when the block raises."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_thread_fixture(autouse: bool = True) -> Callable[..., Any]:
    """A new pytest fixture that runs each test under :func:`one_thread` (``autouse``: every test
    of the module that holds it, without naming it).  Each call makes a new fixture function, so
    every test module can hold its own."""
    import pytest

    @pytest.fixture(autouse=autouse)
    def one_thread_per_test() -> Iterator[None]:
        with one_thread():
            yield

    return one_thread_per_test
