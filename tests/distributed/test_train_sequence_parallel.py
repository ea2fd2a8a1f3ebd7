"""examples/train_canvas.py --sequence-parallel: two gloo processes sharing each canvas print the
same step losses as one process."""

import importlib.util
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "train_canvas.py"


def _example():
    spec = importlib.util.spec_from_file_location("canvas_train_example_sp", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _steps(text: str):
    return re.findall(r"^step +\d+ +loss [0-9.]+$", text, flags=re.M)


def test_sequence_parallel_prints_the_one_process_losses(tmp_path, capsys):
    _example().main(["--steps", "5", "--seed", "0"])
    single = _steps(capsys.readouterr().out)
    assert len(single) == 2  # steps 0 and 4
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(SCRIPT), "--steps", "5", "--seed", "0", "--sequence-parallel", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert _steps(res.stdout) == single, (res.stdout, single)
    assert "done: 5 steps on 2 process(es)" in res.stdout
