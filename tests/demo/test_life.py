"""The Game of Life world-model task, its shipped one-step backbone, the script that makes it and
the loop study / demo built on it."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from canvas_core.demo.life import (COGVIDEOX_LIFE, LifeHead, LifeReentry, LifeTask, cell_logits, decode, encode,
                                   life_inputs, life_step, rollout, snap)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")


def reference_step(board):
    """Conway's rule cell by cell, neighbours counted with explicit modular indices."""
    S = len(board)
    out = [[0] * S for _ in range(S)]
    for y in range(S):
        for x in range(S):
            n = sum(board[(y + dy) % S][(x + dx) % S] for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)
            out[y][x] = int(n == 3 or (board[y][x] == 1 and n == 2))
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(3, 9).flatmap(lambda s: st.lists(st.lists(st.integers(0, 1), min_size=s, max_size=s),
                                                    min_size=s, max_size=s)))
def test_life_step_matches_the_cellwise_rule(board):
    got = life_step(torch.tensor([board]))[0].tolist()
    assert got == reference_step(board)


def test_life_step_edge_boards():
    dead, full = torch.zeros(1, 8, 8, dtype=torch.long), torch.ones(1, 8, 8, dtype=torch.long)
    assert life_step(dead).sum() == 0 and life_step(full).sum() == 0  # everyone has 8 neighbours: dies
    blinker = torch.zeros(1, 8, 8, dtype=torch.long)
    blinker[0, 3, 2:5] = 1
    assert torch.equal(life_step(life_step(blinker)), blinker) and not torch.equal(life_step(blinker), blinker)
    glider = torch.zeros(1, 8, 8, dtype=torch.long)
    for y, x in ((0, 1), (1, 2), (2, 0), (2, 1), (2, 2)):
        glider[0, y, x] = 1
    state = glider
    for _ in range(32):  # a glider crosses the 8 x 8 torus diagonally in 32 steps
        state = life_step(state)
    assert torch.equal(state, glider)


def test_task_boards_are_consecutive_states_that_still_move():
    task = LifeTask(size=8, k_max=8)
    batch = task.sample(64, torch.Generator().manual_seed(0))
    assert batch.boards.shape == (64, 9, 8, 8)
    for k in range(8):
        assert torch.equal(life_step(batch.boards[:, k]), batch.boards[:, k + 1])
    assert (batch.target(8) != batch.target(7)).flatten(1).any(1).all()
    again = task.sample(64, torch.Generator().manual_seed(0))
    assert torch.equal(again.boards, batch.boards)


def test_encode_decode_snap_and_head():
    board = LifeTask().sample(4, torch.Generator().manual_seed(1)).start
    frame = encode(board)
    assert frame.shape == (4, 1, 4, 16, 16) and set(frame.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(decode(frame), board)
    noisy = frame * 0.3 + 0.2 * torch.randn(frame.shape, generator=torch.Generator().manual_seed(2))
    noisy.requires_grad_(True)
    snapped = snap(noisy)
    assert torch.equal(snapped, encode(decode(noisy)))  # forward: exactly the hard decode + re-encode
    snapped.sum().backward()
    assert noisy.grad is not None and noisy.grad.abs().sum() > 0  # backward: straight-through, trainable
    head = LifeHead()
    assert sum(p.numel() for p in head.parameters()) == 17
    with torch.no_grad():
        assert torch.equal((head(noisy) > 0).long(), decode(noisy))
        assert torch.allclose(head(noisy), 4 * cell_logits(noisy), atol=1e-6)


def test_shipped_backbone_is_good_not_perfect_and_starts_the_loops_at_the_rollout():
    from canvas_core import graft_looped_blocks, set_loops
    import canvas_core.demo
    from canvas_core.demo.life_pretrain import LIFE_NAME, install_life_topology, load_life_backbone

    shipped = Path(canvas_core.demo.__file__).parent / "weights" / LIFE_NAME
    names = {f.name for f in shipped.iterdir()}
    assert {"config.json", "diffusion_pytorch_model.safetensors", "prompt.safetensors", "pretrain.json"} <= names
    assert sum(f.stat().st_size for f in shipped.iterdir()) < 1024 * 1024
    backbone = load_life_backbone()
    for key, value in COGVIDEOX_LIFE.items():
        assert backbone.config[key] == value, key
    stepper = install_life_topology(copy.deepcopy(backbone))
    batch = LifeTask().sample(256, torch.Generator().manual_seed(5))
    one = decode(rollout(stepper, batch.start, 1))
    exact = (one == batch.target(1)).flatten(1).all(1).float().mean().item()
    assert 0.8 < exact < 0.99  # trained to a good but imperfect one-step model
    # the frozen backbone looped as a step map (re-entering through snap or the trainable
    # LifeReentry, gates at 1) is exactly the explicit rollout before training
    x = batch.start[:64]
    for reenter in (snap, LifeReentry()):
        looped = copy.deepcopy(backbone)
        graft_looped_blocks(looped, max_loops=3, freeze="full", scope="model", reenter=reenter, step_adapter="gated",
                            gate_init_bias=1.0, action_dim=1, use_gradient_checkpointing=False)
        install_life_topology(looped)
        for k in (1, 3, 5):  # 5: beyond the grafted count (test-time depth)
            set_loops(looped, k)
            with torch.no_grad():
                out = looped(**life_inputs(looped, encode(x))).sample
            assert torch.equal(decode(out), decode(rollout(stepper, x, k))), k
    # the reentry's 17 parameters are loop parameters: they train with the backbone frozen
    from canvas_core.looping import loop_parts_of

    names = [n for n, _ in loop_parts_of(looped)[0].named_loop_parameters()]
    assert "reenter.read.proj.weight" in names and all(p.requires_grad for p in looped.canvas_loop.reenter.parameters())
    assert not any(p.requires_grad for n, p in looped.named_parameters() if not n.startswith("canvas_loop."))


def _script(folder, name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pretrain_script_is_byte_reproducible(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        script = _script("scripts", "pretrain_life_backbone")
        for out in ("a", "b"):
            assert script.main(["--steps", "2", "--batch-size", "4", "--eval-every", "1", "--out", str(tmp_path / out)]) == 0
        assert script.main(["--steps", "0", "--out", str(tmp_path / "c")]) == 2
    finally:
        torch.set_num_threads(threads)
    io = capsys.readouterr()
    assert "one-step exact" in io.out and "--steps must be an integer >= 1" in io.err
    assert not (tmp_path / "c").exists()
    for name in ("diffusion_pytorch_model.safetensors", "prompt.safetensors", "config.json", "pretrain.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    meta = json.loads((tmp_path / "a" / "pretrain.json").read_text())
    assert [row["step"] for row in meta["curve"]] == [0, 1, 2]
    from canvas_core.demo.life_pretrain import load_life_backbone

    assert load_life_backbone(tmp_path / "a").demo_prompt.shape == (4, 16)


def test_loop_study_quick_runs_every_condition():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loop_study.py"), "--quick"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    table = out[out.index("== exact-state accuracy"):out.index("== equal compute")]
    rows = re.findall(r"^ ?(\d)  (.+?)\s{2,}([\d,]+)  (\S+)\s+([\d.]+) \+- ([\d.]+)\s+([\d.]+) \+- ([\d.]+)", table,
                      flags=re.M)
    names = {(int(k), name.strip()) for k, name, *_ in rows}
    for k in (1, 2):
        for name in ("explicit rollout (no training)", "frozen + loops, scope='model'", "frozen + loops, scope='stack'",
                     "frozen + loops, scope='block'", "frozen, 1 loop", "unfrozen, 1 pass"):
            assert (k, name) in names, (k, name)
    assert (2, "unfrozen, 2k blocks") in names
    params = {(int(k), name.strip()): int(p.replace(",", "")) for k, name, p, *_ in rows}
    assert params[(2, "explicit rollout (no training)")] == 0
    assert params[(2, "frozen, 1 loop")] == params[(2, "frozen + loops, scope='model'")] < 100
    assert params[(2, "unfrozen, 1 pass")] > 40_000
    for k, name, p, lr, acc, sd, err, esd in rows:
        assert 0 <= float(acc) <= 1 and 0 <= float(err) <= 1
    for words in ("== test-time depth", "== adaptive exit", "summary", "--quick: a smoke run"):
        assert words in out, words


def test_loop_study_refuses_unknown_task_and_kinds(capsys):
    study = _script("benchmarks", "loop_study")
    assert study.main(["--task", "nope"]) == 2
    assert "--task must be life (default) or blob" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.main(["--kinds", "model,nope"])
    assert "unknown ['nope']" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["model", "stack"])
def test_arms_built_with_one_seed_are_identical_whatever_ran_before(kind):
    """``canvas demo`` and ``benchmarks/loop_study.py`` draw different numbers before building an
    arm; the arm itself depends on the seed only (grafted parameters included)."""
    from canvas_core.demo.life_pretrain import load_life_backbone
    from canvas_core.demo.life_study import make_arm

    backbone = load_life_backbone()
    torch.manual_seed(123)
    a = make_arm(backbone, kind, 2, seed=5)
    torch.randn(1000)  # another caller's draws in between
    b = make_arm(backbone, kind, 2, seed=5)
    c = make_arm(backbone, kind, 2, seed=6)
    sa, sb, sc = (dict(list(arm.model.state_dict().items()) + [("head." + n, t) for n, t in
                                                                  arm.head.state_dict().items()]) for arm in (a, b, c))
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
    if kind == "model":  # random grafted parts (the reentry / adapter): another seed draws others
        assert any(not torch.equal(sa[n], sc[n]) for n in sa)
