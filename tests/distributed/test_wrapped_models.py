"""Wrapped models on gloo process groups (``wrapped_worker.py``, 2 CPU ranks, a 20 s process-group
timeout so that a rank left waiting fails the test instead of hanging it):

* ``DistributedDataParallel`` and ``parallelize_canvas``: checkpoints and telemetry use the plain
  model's names, both ways (save wrapped / load plain, and the reverse);
* sequence parallelism: a forward whose batch size, dtype, autocast state, active_regions or beta
  differs between the ranks raises SequenceParallelError on every rank (it crashed a rank inside
  gloo), a second parallelize_canvas and telemetry are refused clearly;
* FSDP2 (``fully_shard``): a save on every rank writes the whole gathered model, a save by one
  rank alone or refused by one rank raises CheckpointError (it hung), a file loads into the
  sharded model, and a load refused by one rank only is refused by every rank with the model
  unchanged (the other ranks loaded: a half-loaded model).
"""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("canvas_wrapped_launch", Path(__file__).with_name("_launch.py"))
_launch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_launch)

WORKER = Path(__file__).with_name("wrapped_worker.py")


@pytest.mark.parametrize("scenario", ["ddp", "sp", "sp_calls", "sp_autocast", "fsdp", "fsdp_load"])
def test_wrapped_models(tmp_path, scenario):
    if scenario.startswith("fsdp"):
        pytest.importorskip("torch.distributed.fsdp", reason="FSDP2")
        from torch.distributed import fsdp

        if not hasattr(fsdp, "fully_shard"):
            pytest.skip("this torch has no FSDP2 fully_shard")
    out = _launch.launch(2, scenario, "--dir", str(tmp_path), "--pg-timeout", "20", worker=WORKER, timeout=180)
    assert f"OK {scenario} world=2" in out, out
