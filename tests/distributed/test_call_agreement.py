"""Agreement between the ranks of a gloo group, per call (``agreement_worker.py``, a 4 s process-group
timeout so that a rank left waiting fails the test instead of hanging it):

* ``shard_canvas`` / ``unshard_canvas`` with tensors that differ between the ranks raise
  ``SequenceParallelError`` on every rank (``unshard_canvas`` stopped a rank inside gloo);
* FSDP2 save meetings: given-up rounds leave no keys, a save refused on one rank after the process
  group was made again on a fresh store is refused on every rank and the next save works (the
  ranks' round counters used to be kept per process and no longer matched), and two ranks
  waiting for a third both give up cleanly;
* a torch without the private ``_get_default_store`` gets a ``CheckpointError`` (no ImportError).
"""

import importlib.util
from pathlib import Path

import pytest
import torch

from canvas_core.errors import CheckpointError

_spec = importlib.util.spec_from_file_location("canvas_agreement_launch", Path(__file__).with_name("_launch.py"))
_launch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_launch)

WORKER = Path(__file__).with_name("agreement_worker.py")


def _fsdp2():
    pytest.importorskip("torch.distributed.fsdp", reason="FSDP2")
    from torch.distributed import fsdp

    if not hasattr(fsdp, "fully_shard"):
        pytest.skip("this torch has no FSDP2 fully_shard")


@pytest.mark.parametrize("scenario, world", [("canvas_calls", 2), ("sharded_rounds", 2), ("sharded_three", 3)])
def test_call_agreement(tmp_path, scenario, world):
    if scenario.startswith("sharded"):
        _fsdp2()
    out = _launch.launch(world, scenario, "--dir", str(tmp_path), "--pg-timeout", "4", worker=WORKER, timeout=90)
    assert f"OK {scenario} world={world}" in out, out


def test_a_torch_without_the_private_store_getter_gets_a_checkpoint_error(monkeypatch):
    from torch.distributed import distributed_c10d

    from canvas_core.checkpoints.sharded import agree_before_gather

    monkeypatch.delattr(distributed_c10d, "_get_default_store")
    with pytest.raises(CheckpointError, match="_get_default_store.*this torch .* has no such function"):
        agree_before_gather({"w": torch.zeros(1)}, "save_canvas_checkpoint", None)
