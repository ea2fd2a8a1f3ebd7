"""Loop checkpoints and wrapped action heads, and ambiguous headers.

* A head wrapped by ``torch.compile`` (``_orig_mod.``) or ``DataParallel`` (``module.``) writes
  the plain head's names and reads files of the plain head, and the other way round (the names
  used to be written as the wrapper had them, and the other head refused the file with "has
  shape None in the model"); files written that way before still load.
* A file whose header names a tensor twice is refused (safetensors keeps the last silently).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import canvas_core as cc
from canvas_core.errors import CheckpointError
from tests.looping._scope_setup import make_net, randomize_loop_params

torch.set_num_threads(1)

WRAPPERS: Dict[str, Callable[[nn.Module], nn.Module]] = {
    "compile": lambda head: torch.compile(head, backend="eager"),
    "data_parallel": nn.DataParallel,
}


def _grafted(seed: int) -> Tuple[list, nn.Module]:
    """Looped blocks and action head of a tiny net, every value drawn from ``seed``."""
    blocks, head = cc.graft_looped_blocks(make_net(), max_loops=3, action_dim=5)
    gen = torch.Generator().manual_seed(seed)
    for b in blocks:
        randomize_loop_params(b, gen)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return blocks, head


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _file_keys(path: Path) -> set:
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


@pytest.mark.parametrize("wrap", sorted(WRAPPERS))
def test_wrapped_head_file_loads_into_plain_head(tmp_path, wrap):
    blocks, head = _grafted(1)
    path = tmp_path / "loops.safetensors"
    cc.save_loop_checkpoint(blocks, WRAPPERS[wrap](head), path)
    assert {k for k in _file_keys(path) if k.startswith("head.")} == {f"head.{n}" for n in head.state_dict()}
    blocks2, head2 = _grafted(2)
    assert not _same(head, head2)
    cc.load_loop_checkpoint(blocks2, head2, path)
    assert _same(head, head2)
    assert all(_same(a, b) for a, b in zip(blocks, blocks2))


@pytest.mark.parametrize("wrap", sorted(WRAPPERS))
def test_plain_head_file_loads_into_wrapped_head(tmp_path, wrap):
    blocks, head = _grafted(1)
    path = tmp_path / "loops.safetensors"
    cc.save_loop_checkpoint(blocks, head, path)
    blocks2, head2 = _grafted(2)
    cc.load_loop_checkpoint(blocks2, WRAPPERS[wrap](head2), path)
    assert _same(head, head2)


def _rewrite(src: Path, dst: Path, rename: Callable[[str], str], extra: Dict[str, torch.Tensor] = None) -> None:
    """``src`` saved again as ``dst`` with its head tensors (and the head of the recorded
    structure, its hash made to fit) renamed, plus the tensors ``extra``."""
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {(f"head.{rename(k[5:])}" if k.startswith("head.") else k): f.get_tensor(k) for k in f.keys()}
    tensors.update(extra or {})
    structure = json.loads(meta["structure"])
    structure["head"] = {rename(n): s for n, s in structure["head"].items()}
    for n in extra or {}:
        structure["head"][n[5:]] = list(extra[n].shape)
    meta["structure"] = json.dumps(structure, sort_keys=True)
    meta["structure_hash"] = hashlib.sha256(
        json.dumps(structure, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    save_file(tensors, str(dst), metadata=meta)


def test_file_with_compiled_names_written_before_loads_into_plain_head(tmp_path):
    blocks, head = _grafted(1)
    src, old = tmp_path / "plain.safetensors", tmp_path / "old.safetensors"
    cc.save_loop_checkpoint(blocks, head, src)
    _rewrite(src, old, lambda n: f"_orig_mod.{n}")  # as a compiled head wrote it before
    assert "head._orig_mod.net.0.weight" in _file_keys(old)
    blocks2, head2 = _grafted(2)
    cc.load_loop_checkpoint(blocks2, head2, old)
    assert _same(head, head2)
    blocks3, head3 = _grafted(3)
    cc.load_loop_checkpoint(blocks3, torch.compile(head3, backend="eager"), old)
    assert _same(head, head3)


def test_file_with_data_parallel_names_written_before_loads_into_data_parallel_head(tmp_path):
    """``module.`` is dropped only where the given head wraps its module there (a submodule may be
    called ``module``): such a file loads into the wrapped head it was saved from."""
    blocks, head = _grafted(1)
    src, old = tmp_path / "plain.safetensors", tmp_path / "old.safetensors"
    cc.save_loop_checkpoint(blocks, head, src)
    _rewrite(src, old, lambda n: f"module.{n}")
    blocks2, head2 = _grafted(2)
    cc.load_loop_checkpoint(blocks2, nn.DataParallel(head2), old)
    assert _same(head, head2)
    with pytest.raises(CheckpointError, match=r"checkpoint's action head has tensor 'module\.net\.0\.bias' and the other has not"):
        cc.load_loop_checkpoint(*_grafted(3), old)


def test_plain_and_compiled_name_of_one_head_tensor_is_refused(tmp_path):
    blocks, head = _grafted(1)
    src, both = tmp_path / "plain.safetensors", tmp_path / "both.safetensors"
    cc.save_loop_checkpoint(blocks, head, src)
    bias = head.state_dict()["net.0.bias"]
    _rewrite(src, both, lambda n: n, {"head._orig_mod.net.0.bias": torch.full_like(bias, 7.0)})
    blocks2, head2 = _grafted(2)
    before = {k: v.clone() for k, v in head2.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"two action-head tensors named 'net\.0\.bias'"):
        cc.load_loop_checkpoint(blocks2, head2, both)
    assert all(torch.equal(before[k], v) for k, v in head2.state_dict().items())


def _rewrite_header(src: Path, dst: Path, edit: Callable[[str], str]) -> None:
    """``src`` written to ``dst`` with its JSON header text passed through ``edit``."""
    raw = src.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    body = edit(raw[8:8 + n].decode().rstrip()).encode()
    body += b" " * (-len(body) % 8)
    dst.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n:])


@pytest.mark.parametrize("key", ["blocks.0.loop_gate", "head.net.0.bias"])
def test_a_tensor_named_twice_is_refused(tmp_path, key):
    blocks, head = _grafted(1)
    src, bad = tmp_path / "good.safetensors", tmp_path / "twice.safetensors"
    cc.save_loop_checkpoint(blocks, head, src)
    raw = src.read_bytes()
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    entry = f'"{key}": ' + json.dumps(header[key])
    _rewrite_header(src, bad, lambda text: text[:-1] + "," + entry + "}")
    blocks2, head2 = _grafted(2)
    before = [p.detach().clone() for p in list(head2.parameters()) + list(blocks2[0].loop_parameters())]
    with pytest.raises(CheckpointError, match=rf"tensor '{key}' more than once") as err:
        cc.load_loop_checkpoint(blocks2, head2, bad)
    assert "twice.safetensors" in str(err.value) and "save the loops again" in str(err.value)
    after = list(head2.parameters()) + list(blocks2[0].loop_parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    cc.load_loop_checkpoint(blocks2, head2, src)  # the file it was made from loads


def test_a_header_entry_given_twice_is_refused(tmp_path):
    blocks, head = _grafted(1)
    src, bad = tmp_path / "good.safetensors", tmp_path / "meta_twice.safetensors"
    cc.save_loop_checkpoint(blocks, head, src, metadata={"step": 1})

    def edit(text: str) -> str:  # a second user_metadata inside __metadata__
        return text.replace('"__metadata__":{', '"__metadata__":{"user_metadata":"{\\"step\\": 99}",', 1)

    _rewrite_header(src, bad, edit)
    assert b'\\"step\\": 99' in bad.read_bytes()
    with pytest.raises(CheckpointError, match="the header entry 'user_metadata' more than once"):
        cc.load_loop_checkpoint(*_grafted(2), bad)
