"""Forking the ranks of a multi-process test from a worker script (``sp_worker.py``,
``wrapped_worker.py``), with a deadline so that a hung rank fails the test instead of the run."""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from typing import Callable


def fork_ranks(run: Callable[[int], None], world: int, timeout: float) -> int:
    """Fork ``world`` processes, rank ``r`` calling ``run(r)`` (call this before any torch op, so
    forking is safe); wait at most ``timeout`` seconds, then kill the ranks still running.
    Returns 1 when any rank failed (its traceback printed under ``[rank r]``), else 0."""
    pids = []
    for rank in range(world):
        pid = os.fork()
        if pid == 0:  # the rank
            code = 0
            try:
                run(rank)
            except BaseException:  # noqa: BLE001 - reported, then the exit code says it
                print(f"[rank {rank}]", file=sys.stderr)
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
        pids.append(pid)
    codes, deadline = {}, time.monotonic() + timeout
    while len(codes) < world:
        for pid in pids:
            if pid not in codes:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            for pid in pids:
                if pid not in codes:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    codes[pid] = -9
            print(f"timed out after {timeout} s", file=sys.stderr)
        time.sleep(0.05)
    bad = {r: codes[pid] for r, pid in enumerate(pids) if codes[pid]}
    if bad:
        print(f"ranks failed: {bad}", file=sys.stderr)
    return 1 if bad else 0
