"""Values a loader writes must be the file's values: a float that the model's dtype cannot hold
(``1e5`` into float16 reads ``inf``, into float8_e4m3fn it is clamped to ``448``) is refused after
the cast, not only NaN in the file; the loop loader refuses inference tensors before its first
copy (it used to overwrite the loop parameters, then fail in the head); tied weights given
different values by a file are refused.  Covers ``canvas_core.checkpoints.loaded_values``, the
loop loader and the FSDP2 (``fully_shard``) load path of ``sharded.shard_like``."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open
from torch import nn

from canvas_core.checkpoints.loaded_values import loaded_value, refuse_differing_ties, unwritable
from canvas_core.errors import CheckpointError
from canvas_core.looping import graft_looped_blocks, load_loop_checkpoint, save_loop_checkpoint
from tests.looping._scope_setup import make_net

F8 = getattr(torch, "float8_e4m3fn", None)


def _grafted(seed: int = 0):
    return graft_looped_blocks(make_net(seed), max_loops=3, action_dim=5)


def _values(blocks, head) -> list:
    return [p.detach().clone() for b in blocks for _, p in b.named_loop_parameters()] + [
        t.clone() for t in head.state_dict().values()]


def _unchanged(before: list, blocks, head) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, _values(blocks, head)))


def test_loaded_value_casts_and_refuses_what_the_dtype_cannot_hold():
    t = torch.tensor([1.0, 1e5])
    with pytest.raises(CheckpointError, match=r"file 'f': tensor 'w' \(2,\) is torch\.float32 in the file and the "
                                              r"model's tensor is torch\.float16.*1 of its values.*saved dtype"):
        loaded_value(t, torch.float16, "w", "file 'f'")
    out = loaded_value(torch.tensor([1.0, 2.5]), torch.float16, "w", "file 'f'")
    assert out.dtype == torch.float16 and out.tolist() == [1.0, 2.5]
    assert loaded_value(t, torch.float32, "w", "f") is t  # same dtype: returned as it is
    assert loaded_value(t, torch.float64, "w", "f").dtype == torch.float64
    with pytest.raises(CheckpointError, match="'w' holds NaN or infinite values"):
        loaded_value(torch.tensor([float("nan")]), torch.float32, "w", "f")
    with pytest.raises(CheckpointError, match="torch.complex32"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # complex32 is experimental; 1e5 overflows it as it does float16
        loaded_value(torch.tensor([1e5 + 0j], dtype=torch.complex64), torch.complex32, "c", "f")


@pytest.mark.skipif(F8 is None, reason="this torch has no float8")
def test_loaded_value_refuses_a_value_float8_would_clamp():
    with pytest.raises(CheckpointError, match=r"torch\.float8_e4m3fn in the model, whose largest value is 448; 1 of "
                                              r"the file's values lie beyond it"):
        loaded_value(torch.tensor([1.0, 1e5]), F8, "scale", "f")
    ok = loaded_value(torch.tensor([1.0, -448.0]), F8, "scale", "f")
    assert ok.dtype == F8 and ok.float().tolist() == [1.0, -448.0]


def test_refuse_differing_ties_names_both():
    a = torch.zeros(3)
    refuse_differing_ties([("a", a, torch.ones(3)), ("b", a, torch.ones(3)), ("c", torch.zeros(3), torch.zeros(3))],
                          "f")
    with pytest.raises(CheckpointError, match=r"f: tensors 'a' and 'b' are one tensor in the model"):
        refuse_differing_ties([("a", a, torch.zeros(3)), ("b", a, torch.ones(3))], "f")
    # other views of one storage (another offset) are not ties
    base = torch.zeros(6)
    refuse_differing_ties([("x", base[:3], torch.zeros(3)), ("y", base[3:], torch.ones(3))], "f")


def test_unwritable_names_inference_tensors_and_expanded_views():
    with torch.inference_mode():
        inf = torch.zeros(2)
    assert "inference_mode" in unwritable(inf)
    with torch.inference_mode():
        assert unwritable(inf) == ""
    assert "expanded view" in unwritable(torch.zeros(1).expand(3))
    assert unwritable(torch.zeros(3)) == ""


def test_loop_checkpoint_into_float16_loops_refuses_overflow(tmp_path):
    blocks, head = _grafted()
    with torch.no_grad():
        blocks[0].named_loop_parameters()[0][1].view(-1)[0] = 1e5
    path = str(tmp_path / "loops.safetensors")
    save_loop_checkpoint(blocks, head, path)
    b2, h2 = _grafted(1)
    for b in b2:
        for _, p in b.named_loop_parameters():
            p.data = p.data.half()
    before = _values(b2, h2)
    with pytest.raises(CheckpointError, match=r"'blocks\.0\.loop_emb' .* torch\.float32 in the file and the model's "
                                              r"tensor is torch\.float16"):
        load_loop_checkpoint(b2, h2, path)
    assert _unchanged(before, b2, h2)


def test_loop_checkpoint_into_a_float16_head_refuses_overflow(tmp_path):
    blocks, head = _grafted()
    with torch.no_grad():
        next(head.parameters()).view(-1)[0] = 1e5
    path = str(tmp_path / "loops.safetensors")
    save_loop_checkpoint(blocks, head, path)
    b2, h2 = _grafted(1)
    h2.half()
    before = _values(b2, h2)
    with pytest.raises(CheckpointError, match=r"'head\.net\.0\.weight' .*torch\.float16.*saved dtype"):
        load_loop_checkpoint(b2, h2, path)
    assert _unchanged(before, b2, h2)
    assert all(torch.isfinite(p).all() for p in h2.parameters())
    h2.float()  # a file that fits loads into the float16 head, cast
    with torch.no_grad():
        next(head.parameters()).view(-1)[0] = 0.5
    save_loop_checkpoint(blocks, head, path)
    h2.half()
    load_loop_checkpoint(b2, h2, path)
    assert next(h2.parameters()).view(-1)[0].item() == 0.5


def test_loop_checkpoint_into_an_inference_mode_head_is_refused_before_any_copy(tmp_path):
    blocks, head = _grafted()
    path = str(tmp_path / "loops.safetensors")
    save_loop_checkpoint(blocks, head, path)
    b2, h2 = _grafted(1)
    with torch.inference_mode():
        h_inf = copy.deepcopy(h2)
        for m in h_inf.modules():
            for k, v in list(m._parameters.items()):
                if v is not None:
                    m._parameters[k] = nn.Parameter(v.detach().clone(), requires_grad=False)
    before = _values(b2, h_inf)
    with pytest.raises(CheckpointError, match=r"'head\.net\.0\.weight' was made under torch\.inference_mode\(\)"):
        load_loop_checkpoint(b2, h_inf, path)
    assert _unchanged(before, b2, h_inf)  # the loop parameters were left as they were
    with torch.inference_mode():
        load_loop_checkpoint(b2, h_inf, path)  # inside the mode it loads
    assert torch.equal(h_inf.state_dict()["net.0.weight"], head.state_dict()["net.0.weight"])


def test_loop_checkpoint_with_different_values_for_tied_loop_parameters_is_refused(tmp_path):
    blocks, head = _grafted()
    blocks[1].loop_emb = blocks[0].loop_emb  # one tensor shared by two blocks
    path = tmp_path / "loops.safetensors"
    save_loop_checkpoint(blocks, head, str(path))
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    tensors["blocks.0.loop_emb"] = torch.zeros_like(tensors["blocks.0.loop_emb"])
    tensors["blocks.1.loop_emb"] = torch.ones_like(tensors["blocks.1.loop_emb"])
    save_file(tensors, str(tmp_path / "edited.safetensors"), metadata=meta)
    b2, h2 = _grafted(1)
    b2[1].loop_emb = b2[0].loop_emb
    before = _values(b2, h2)
    with pytest.raises(CheckpointError, match=r"'blocks\.0\.loop_emb' and 'blocks\.1\.loop_emb' are one tensor"):
        load_loop_checkpoint(b2, h2, str(tmp_path / "edited.safetensors"))
    assert _unchanged(before, b2, h2)
    load_loop_checkpoint(b2, h2, str(path))  # the file as saved (equal copies) loads


_FSDP_WORKER = """
import os, sys, datetime
import torch
import torch.distributed as dist
from torch import nn
import canvas_core as cc
from canvas_core.errors import CheckpointError
from torch.distributed.fsdp import fully_shard
torch.set_num_threads(1)
rank, port, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                        timeout=datetime.timedelta(seconds=20))
from tests.checkpoints._tiny_canvas import SCHEMA, Model
torch.manual_seed(0)
m = Model()
with torch.no_grad():
    m.head.weight[0, 0] = 1e5
if rank == 0:
    cc.save_canvas_checkpoint(m, path, SCHEMA)
dist.barrier()
torch.manual_seed(1)
m2 = Model().half()
fully_shard(m2.head); fully_shard(m2)
before = m2.head.weight.full_tensor().clone()
try:
    cc.load_canvas_checkpoint(m2, path, SCHEMA)
    print(f"rank{rank} LOADED", m2.head.weight.full_tensor()[0, 0].item(), flush=True)
except CheckpointError as e:
    same = torch.equal(before, m2.head.weight.full_tensor())
    print(f"rank{rank} REFUSED same={same}: {e}", flush=True)
dist.destroy_process_group()
"""


def test_fsdp2_load_into_a_float16_model_refuses_overflow_on_every_rank(tmp_path):
    pytest.importorskip("torch.distributed.fsdp")
    from torch.distributed import fsdp

    if not hasattr(fsdp, "fully_shard"):
        pytest.skip("this torch has no FSDP2 fully_shard")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(_FSDP_WORKER))
    root = str(Path(__file__).resolve().parents[2])
    env = {"PYTHONPATH": root, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, str(worker), str(r), str(port), str(tmp_path / "c.safetensors")],
                              cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for r, out in enumerate(outs):
        assert f"rank{r} REFUSED same=True" in out, out[-3000:]
        assert "torch.float16" in out and "65504" in out, out[-3000:]
