"""The one-thread helpers of ``canvas_core.testing`` (one definition for every test module that
ran its own copy of the fixture): the count is 1 inside and comes back after, also on errors."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch

from canvas_core.testing import one_thread, one_thread_fixture


@pytest.fixture(scope="module", autouse=True)
def _three_threads() -> Iterator[None]:
    # module scope: set up before the per-test fixture, so that one must lower it to 1
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(before)


_one_thread = one_thread_fixture()


def test_the_fixture_runs_each_test_of_its_module_on_one_thread(request: pytest.FixtureRequest) -> None:
    assert "_one_thread" in request.fixturenames  # pytest names it by the attribute
    assert torch.get_num_threads() == 1


def test_the_context_manager_restores_the_count_also_when_the_block_raises() -> None:
    torch.set_num_threads(3)
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 3
    with pytest.raises(KeyError):
        with one_thread():
            raise KeyError("inside")
    assert torch.get_num_threads() == 3
    torch.set_num_threads(1)  # what the fixture restores after this test


def test_each_call_makes_a_fixture_of_its_own() -> None:
    assert one_thread_fixture() is not one_thread_fixture()
