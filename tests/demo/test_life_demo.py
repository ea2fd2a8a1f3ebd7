"""`canvas demo` (default task: Game of Life): the comparison table, its artifacts, bad options."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")


def run_cli(*args, timeout=400):
    return subprocess.run([sys.executable, "-m", "canvas_core.cli", "demo", *args, "--no-progress"],
                          capture_output=True, text=True, timeout=timeout)


def test_life_demo_prints_the_comparison(tmp_path):
    from canvas_core.demo.life_demo import LifeDemoConfig, run_life_demo

    lines = []
    res = run_life_demo(LifeDemoConfig(ks=(1, 3), steps=2, batch_size=4, test_boards=24, out=tmp_path, progress=False),
                        log=lines.append)
    out = "\n".join(lines)
    for words in ("== 1. the world", "== 2. the backbone", "== 3. training", "1 seed, no learning-rate sweep",
                  "== 4. result", "adaptive exit", "in words", "a smoke run", "== 5. telemetry", "gate values", "relative change of the state",
                  "== 6. artifacts"):
        assert words in out, words
    table = out[out.index("== 4. result"):out.index("adaptive exit")].splitlines()[2:]
    rows = {line[:34].strip(): line[34:].split() for line in table if line.strip()}
    assert list(rows) == ["explicit rollout (no training)", "frozen + loops, scope='model'",
                          "frozen + loops, scope='stack'", "frozen, 1 loop", "unfrozen, 1 pass"]
    assert all(len(cols) == 3 for cols in rows.values())  # trainable, k=1, k=3
    assert rows["explicit rollout (no training)"][0] == "0" and int(rows["unfrozen, 1 pass"][0].replace(",", "")) > 40_000
    # the looped model starts at the rollout, and 2 steps of a small learning rate keep it there
    assert res.exact["model"][3] == pytest.approx(res.exact["rollout"][3], abs=0.1)
    assert set(res.exit) == {1, 3} and all(1 <= it <= k for k, (_, it) in res.exit.items())
    assert res.trainable["frozen1"] == res.trainable["model"]  # same trainable parameters, one loop
    from canvas_core import graft_looped_blocks, load_loop_checkpoint
    from canvas_core.demo.life import LifeHead, LifeReentry
    from canvas_core.demo.life_pretrain import load_life_backbone
    from canvas_core.looping import loop_parts_of

    model = load_life_backbone()
    graft_looped_blocks(model, max_loops=3, freeze="full", scope="model", reenter=LifeReentry(), step_adapter="gated",
                        gate_init_bias=1.0, action_dim=1)
    header = load_loop_checkpoint(loop_parts_of(model), LifeHead(), str(res.checkpoint))
    assert header["user_metadata"]["demo_task"] == "life"
    assert res.picture.read_bytes()[:4] == b"\x89PNG"


def test_canvas_demo_default_is_the_life_task(tmp_path):
    proc = run_cli("--quick", "--ks", "2", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Game of Life" in proc.stdout and "frozen + loops, scope='model'" in proc.stdout
    assert (tmp_path / "loops.safetensors").exists()


@pytest.mark.parametrize("args, words", [
    (["--steps", "0"], "--steps must be an integer >= 1"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--lr", "nan"], "--lr must be a number > 0 (finite"),
    (["--lr", "-1"], "--lr must be a number > 0"),
    (["--ks", "0"], "--ks must list integers from 1 to 16"),
    (["--ks", "two"], "--ks must be comma-separated integers"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**63)"),
    (["--backbone", "mochi"], "--backbone applies to the moving-blob task only; add --task blob"),
    (["--loops", "3", "--random-init"], "--loops, --random-init applies to the moving-blob task only"),
    (["--device", "cuda"], "runs on the CPU"),
])
def test_life_demo_bad_options(tmp_path, capsys, args, words):
    from canvas_core.cli import main

    assert main(["demo", "--quick", "--no-progress", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "o" / "loops.safetensors").exists()
