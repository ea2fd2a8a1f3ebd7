"""Start a group of gloo ranks running ``sp_worker.py`` scenarios on a free local port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).resolve().parent / "sp_worker.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, *args: str, timeout: float = 240, worker: Path = WORKER) -> str:
    """Run the scenarios ``args`` of ``worker`` (default ``sp_worker.py``) on ``world`` ranks;
    assert they all passed; rank 0's output."""
    cmd = [sys.executable, str(worker), "--world", str(world), "--port", str(free_port()),
           "--timeout", str(timeout), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=timeout + 60)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    return res.stdout
