"""The meeting of the ranks of a sharded (FSDP2) save or load, run against an in-process store:
a rank that never came is named; a meeting every rank reached but one left half-way (a killed
rank) no longer says "rank(s) [] did not call"."""

from __future__ import annotations

from datetime import timedelta
from typing import Dict, List

import pytest
import torch.distributed as dist

from canvas_core.checkpoints import sharded
from canvas_core.errors import CheckpointError


class _Store:
    """The part of a ``torch.distributed`` store the meeting uses; waits give up at once."""

    timeout = timedelta(seconds=0.2)

    def __init__(self) -> None:
        self.data: Dict[str, bytes] = {}

    def add(self, key: str, n: int) -> int:
        value = int(self.data.get(key, b"0")) + n
        self.data[key] = str(value).encode()
        return value

    def set(self, key: str, value: str) -> None:
        self.data[key] = value.encode()

    def get(self, key: str) -> bytes:
        return self.data[key]

    def check(self, keys: List[str]) -> bool:
        return all(k in self.data for k in keys)

    def wait(self, keys: List[str], timeout: timedelta) -> None:
        if not self.check(keys):
            raise RuntimeError("wait timed out")

    def compare_set(self, key: str, expected: str, desired: str) -> bytes:
        if self.data.get(key, b"") == expected.encode():
            self.data[key] = desired.encode()
        return self.data[key]

    def delete_key(self, key: str) -> bool:
        return self.data.pop(key, None) is not None


@pytest.fixture
def store(monkeypatch) -> _Store:
    s = _Store()
    monkeypatch.setattr(sharded, "_default_store", lambda where: s)
    monkeypatch.setattr(sharded, "_ranks_of", lambda tensors: [0, 1])
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    return s


@pytest.mark.parametrize("action", ["save", "load"])
def test_a_rank_that_never_came_is_named(store, action):
    with pytest.raises(CheckpointError, match=r"rank\(s\) \[1\] did not call") as err:
        sharded.agree_before_gather({}, f"x_{action}", None, action=action)
    assert "every rank" in str(err.value)


@pytest.mark.parametrize("action", ["save", "load"])
def test_a_rank_that_stopped_half_way_is_no_empty_list(store, action):
    # rank 1 posted its status for round 0 but never counted itself in (killed in between)
    store.set(f"canvas_core/sharded_{action}/0,1/0/status/1", "ok")
    with pytest.raises(CheckpointError) as err:
        sharded.agree_before_gather({}, f"x_{action}", None, action=action)
    text = str(err.value)
    assert "[]" not in text, text
    assert "every rank called" in text and "stopped in the middle" in text and "alive" in text
    assert ("nothing was gathered" if action == "save" else "no rank changed") in text
