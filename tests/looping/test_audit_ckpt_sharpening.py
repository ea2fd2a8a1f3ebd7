"""Sharpening and re-entry in loop checkpoints, the "constant" schedule at initialisation, and what
ungrafting returns and warns about (audit of the loop probes)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import canvas_core
from canvas_core.errors import CheckpointError
from canvas_core.looping import (SharpeningSchedule, graft_looped_blocks, load_loop_checkpoint,
                                 save_loop_checkpoint)
from canvas_core.looping.checkpoint import _hash

from tests.looping._scope_setup import make_net, randomize_loop_params

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")


def _vit():
    from tests.looping._backbone_setup import inputs, make

    return make("vit"), inputs("vit")["x"]


@pytest.mark.parametrize("scope", ["block", "stack"])
@pytest.mark.parametrize("schedule", ["linear", "cosine", "exponential", "constant"])
def test_every_schedule_with_beta_min_one_keeps_the_graft_identical_at_init(scope, schedule):
    base, x = _vit()
    with torch.no_grad():
        ref = base(x)
    m, _ = _vit()
    s = SharpeningSchedule(max_loops=3, beta_min=1.0, beta_max=3.0, schedule=schedule)
    assert s(0) == 1.0 and s(2) == 3.0
    graft_looped_blocks(m, max_loops=3, scope=scope, sharpening=s)
    for n in (1, 3):
        canvas_core.set_loops(m, n)
        with torch.no_grad():
            assert torch.equal(m(x), ref), (schedule, n)


def _graft_vit(scope, sharpening, seed=0):
    m, x = _vit()
    parts, head = graft_looped_blocks(m, max_loops=3, scope=scope, sharpening=sharpening)
    g = torch.Generator().manual_seed(seed)
    for p in parts:
        randomize_loop_params(p, g)
    return m, parts, head, x


@pytest.mark.parametrize("scope", ["block", "stack"])
def test_a_checkpoint_records_the_sharpening_schedule(scope, tmp_path):
    path = str(tmp_path / "loops.safetensors")
    sharp = SharpeningSchedule(3, 1.0, 4.0)
    m, parts, head, x = _graft_vit(scope, sharp)
    save_loop_checkpoint(parts, head, path)
    for other in (None, SharpeningSchedule(3, 1.0, 2.0), SharpeningSchedule(3, 1.0, 4.0, "cosine")):
        m2, p2, h2, _ = _graft_vit(scope, other, seed=1)
        state = {k: v.clone() for k, v in m2.state_dict().items()}
        with pytest.raises(CheckpointError, match=r"sharpening='SharpeningSchedule\(linear, beta=\[1.0, 4.0\]"
                                                  r".* this model is grafted with .*sharpening="):
            load_loop_checkpoint(p2, h2, path)
        assert all(torch.equal(v, state[k]) for k, v in m2.state_dict().items())
    m3, p3, h3, _ = _graft_vit(scope, SharpeningSchedule(3, 1.0, 4.0), seed=1)
    load_loop_checkpoint(p3, h3, path)
    with torch.no_grad():
        assert torch.equal(m3(x), m(x))
    # and the other way round: saved without, loaded with
    m4, p4, h4, _ = _graft_vit(scope, None)
    save_loop_checkpoint(p4, h4, path)
    m5, p5, h5, _ = _graft_vit(scope, sharp, seed=1)
    with pytest.raises(CheckpointError, match=r"sharpening=None.*sharpening='SharpeningSchedule"):
        load_loop_checkpoint(p5, h5, path)


def test_a_checkpoint_records_the_reenter_map(tmp_path):
    path = str(tmp_path / "loops.safetensors")
    m, x = make_net(), torch.randn(2, 5, 3)
    parts, head = graft_looped_blocks(m, max_loops=3, scope="model", reenter=torch.tanh, latent_channels=3)
    randomize_loop_params(parts[0], torch.Generator().manual_seed(0))
    save_loop_checkpoint(parts, head, path)
    m2 = make_net()
    p2, h2 = graft_looped_blocks(m2, max_loops=3, scope="model", latent_channels=3)
    with pytest.raises(CheckpointError, match=r"reenter='tanh'.*reenter=None"):
        load_loop_checkpoint(p2, h2, path)
    m3 = make_net()
    p3, h3 = graft_looped_blocks(m3, max_loops=3, scope="model", reenter=torch.tanh, latent_channels=3)
    load_loop_checkpoint(p3, h3, path)
    with torch.no_grad():
        assert torch.equal(m3(x), m(x))


def _as_old_file(path):
    """Rewrite ``path`` as a writer that did not record sharpening / reenter would have."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(path, framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    structure = json.loads(meta["structure"])
    for b in structure["blocks"]:
        opts = {k: v for k, v in b.pop("options", {}).items() if k not in ("sharpening", "reenter")}
        if opts:
            b["options"] = opts
    meta.pop("recorded_options")
    meta["structure"] = json.dumps(structure, sort_keys=True)
    meta["structure_hash"] = _hash(structure)
    save_file(tensors, path, metadata=meta)


@pytest.mark.parametrize("scope", ["block", "stack"])
def test_a_file_from_before_the_options_were_recorded_still_loads(scope, tmp_path):
    path = str(tmp_path / "old.safetensors")
    m, parts, head, x = _graft_vit(scope, SharpeningSchedule(3, 1.0, 4.0))
    save_loop_checkpoint(parts, head, path)
    _as_old_file(path)
    for sharp in (SharpeningSchedule(3, 1.0, 4.0), None):  # unknown in the file: not compared
        m2, p2, h2, _ = _graft_vit(scope, sharp, seed=1)
        load_loop_checkpoint(p2, h2, path)
    with torch.no_grad():
        m3, p3, h3, _ = _graft_vit(scope, SharpeningSchedule(3, 1.0, 4.0), seed=1)
        load_loop_checkpoint(p3, h3, path)
        assert torch.equal(m3(x), m(x))
    if scope == "stack":  # the other comparisons still hold for old files
        _, p4, h4, _ = _graft_vit((0, 1), None)
        with pytest.raises(CheckpointError, match="scope"):
            load_loop_checkpoint(p4, h4, path)


@pytest.mark.parametrize("scope", ["stack", (1, 3), "model", "block"])
def test_ungraft_returns_the_parts_the_graft_did_and_they_save(scope, tmp_path):
    path = str(tmp_path / "loops.safetensors")
    m, x = make_net(), torch.randn(2, 5, 3)
    parts, head = graft_looped_blocks(m, max_loops=2, scope=scope, latent_channels=3)
    randomize_loop_params(parts[0], torch.Generator().manual_seed(0))
    with torch.no_grad():
        looped = m(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        removed = canvas_core.ungraft_looped_blocks(m)
    assert removed == parts
    save_loop_checkpoint(removed, head, path)
    m2 = make_net()
    p2, h2 = graft_looped_blocks(m2, max_loops=2, scope=scope, latent_channels=3)
    load_loop_checkpoint(p2, h2, path)
    with torch.no_grad():
        assert torch.equal(m2(x), looped)


@pytest.mark.parametrize("inject", ["add", "concat"])
def test_ungraft_warns_about_a_trained_input_injection(inject):
    m = make_net()
    (span,), _ = graft_looped_blocks(m, max_loops=2, scope=(1, 3), inject=inject, iter_embed=False,
                                     latent_channels=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        canvas_core.ungraft_looped_blocks(m)  # untrained (zero): the plain model is the same
    m = make_net()
    (span,), _ = graft_looped_blocks(m, max_loops=2, scope=(1, 3), inject=inject, iter_embed=False,
                                     latent_channels=3)
    with torch.no_grad():
        if inject == "add":
            span.inject_gate.fill_(0.5)
        else:
            span.inject_proj[0].bias.fill_(0.1)
    with pytest.warns(UserWarning, match=r"input injection of looped part\(s\) \[1\]"):
        canvas_core.ungraft_looped_blocks(m)
