"""examples/train_canvas.py: trains on one process, and on two under torchrun (DDP and FSDP2, gloo on CPU)."""

import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "train_canvas.py"


def _example():
    spec = importlib.util.spec_from_file_location("canvas_train_example", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_single_process_training_lowers_the_loss(capsys):
    ex = _example()
    after_one = ex.main(["--steps", "1", "--depth", "1"])
    after_forty = ex.main(["--steps", "40", "--depth", "1"])
    assert after_forty < 0.5 * after_one
    assert "done: 40 steps on 1 process(es)" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("wrap", ["ddp", "fsdp"])
def test_two_processes_under_torchrun(tmp_path, wrap):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={_free_port()}", str(SCRIPT), "--steps", "5", "--depth", "1",
           *(["--fsdp"] if wrap == "fsdp" else [])]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "done: 5 steps on 2 process(es)" in res.stdout


@pytest.mark.parametrize("how", ["blocks", "whole"])
def test_compiled_training_gives_the_eager_losses(how):
    """--compile (regional by default) trains to the same loss as the eager run; aot_eager keeps
    the test fast while tracing exactly what inductor would get."""
    import torch._dynamo

    ex = _example()
    eager = ex.main(["--steps", "3", "--depth", "2"])
    torch._dynamo.reset()
    compiled = ex.main(["--steps", "3", "--depth", "2", "--compile", how, "--compile-backend", "aot_eager"])
    torch._dynamo.reset()
    assert compiled == pytest.approx(eager, rel=1e-4)
