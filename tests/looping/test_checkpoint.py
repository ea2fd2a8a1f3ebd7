"""Loop checkpoints: safetensors + JSON header, only loop/head params, mismatches refused."""

import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import canvas_core
from canvas_core.errors import CheckpointError
from canvas_core.looping import graft_looped_blocks, load_loop_checkpoint, save_loop_checkpoint


class Tiny(nn.Module):
    def __init__(self, d=16, depth=3):
        super().__init__()
        self.patch_embed = nn.Linear(4, d)
        self.blocks = nn.ModuleList(
            [nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d)) for _ in range(depth)]
        )
        self.proj_out = nn.Linear(d, 4)

    def forward(self, x):
        x = self.patch_embed(x)
        for b in self.blocks:
            x = b(x)
        return self.proj_out(x)


def grafted(d=16, depth=3, loops=3, seed=0):
    torch.manual_seed(seed)
    m = Tiny(d, depth)
    blocks, head = graft_looped_blocks(m, max_loops=loops, inner_dim=d, latent_channels=4)
    return m, blocks, head


def test_roundtrip_restores_exact_values(tmp_path):
    m, blocks, head = grafted()
    with torch.no_grad():
        for p in [p for b in blocks for p in b.loop_parameters()] + list(head.parameters()):
            p.normal_()
    path = tmp_path / "loops.safetensors"
    save_loop_checkpoint(blocks, head, str(path), metadata={"step": 7, "note": "x"})
    m2, blocks2, head2 = grafted(seed=1)
    hdr = load_loop_checkpoint(blocks2, head2, str(path))
    assert hdr["user_metadata"] == {"step": 7, "note": "x"}
    for a, b in zip(blocks, blocks2):
        for (n, p), (n2, p2) in zip(a.named_loop_parameters(), b.named_loop_parameters()):
            assert n == n2 and torch.equal(p, p2)
    for p, p2 in zip(head.state_dict().values(), head2.state_dict().values()):
        assert torch.equal(p, p2)


def test_file_holds_only_loop_and_head_tensors_and_header(tmp_path):
    m, blocks, head = grafted(d=64, depth=4)
    path = tmp_path / "c.safetensors"
    save_loop_checkpoint(blocks, head, str(path))
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    expected = {f"blocks.{i}.{n}" for i in range(4) for n in ("loop_emb", "loop_gate")}
    expected |= {f"head.{k}" for k in head.state_dict()}
    assert keys == expected
    assert meta["format"] == "canvas-core/loop-checkpoint"
    assert (
        meta["canvas_core_version"] == canvas_core.__version__
        and meta["torch_version"] == torch.__version__
    )
    struct = json.loads(meta["structure"])
    assert len(struct["blocks"]) == 4 and struct["blocks"][0]["params"]["loop_emb"] == [3, 64]
    n_saved = sum(b.trainable_params() for b in blocks) + sum(p.numel() for p in head.parameters())
    n_model = sum(p.numel() for p in m.parameters())
    assert n_saved < 0.2 * n_model


@pytest.mark.parametrize("other", [dict(depth=2), dict(loops=2), dict(d=8)])
def test_mismatched_model_refused(tmp_path, other):
    _, blocks, head = grafted()
    path = tmp_path / "c.safetensors"
    save_loop_checkpoint(blocks, head, str(path))
    kw = dict(d=16, depth=3, loops=3)
    kw.update(other)
    _, b2, h2 = grafted(**kw)
    before = [p.clone() for b in b2 for p in b.loop_parameters()]
    with pytest.raises(CheckpointError, match="does not match this model"):
        load_loop_checkpoint(b2, h2, str(path))
    assert all(
        torch.equal(a, b) for a, b in zip(before, [p for b in b2 for p in b.loop_parameters()])
    )


def test_schema_mismatch_refused(tmp_path):
    from canvas_core.schema import CanvasLayout, CanvasSchema

    s1 = CanvasSchema(
        layout=CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"a": (0, 2, 0, 2, 0, 2)})
    )
    s2 = CanvasSchema(
        layout=CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"b": (0, 2, 0, 2, 0, 2)})
    )
    _, blocks, head = grafted()
    path = tmp_path / "c.safetensors"
    save_loop_checkpoint(blocks, head, str(path), metadata={"schema": s1, "run": 1})
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["schema_hash"] == s1.schema_hash()
    _, b2, h2 = grafted()
    with pytest.raises(CheckpointError, match="schema"):
        load_loop_checkpoint(b2, h2, str(path), schema=s2)
    assert load_loop_checkpoint(b2, h2, str(path), schema=s1)["user_metadata"] == {"run": 1}
    assert load_loop_checkpoint(b2, h2, str(path))["schema_hash"] == s1.schema_hash()


def test_bad_files_refused(tmp_path):
    _, blocks, head = grafted()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_loop_checkpoint(blocks, head, str(tmp_path / "missing.safetensors"))
    pkl = tmp_path / "evil.safetensors"
    pkl.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="not a readable"):
        load_loop_checkpoint(blocks, head, str(pkl))
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a canvas-core loop checkpoint"):
        load_loop_checkpoint(blocks, head, str(foreign))
    with pytest.raises(CheckpointError, match="JSON"):
        save_loop_checkpoint(
            blocks, head, str(tmp_path / "x.safetensors"), metadata={"f": object()}
        )


def test_schema_recorded_at_graft_is_checked_automatically(tmp_path):
    from canvas_core.schema import CanvasLayout, CanvasSchema

    s1 = CanvasSchema(
        layout=CanvasLayout(T=1, H=2, W=2, d_model=8, regions={"a": (0, 1, 0, 2, 0, 2)})
    )
    s2 = CanvasSchema(
        layout=CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"a": (0, 2, 0, 2, 0, 2)})
    )
    torch.manual_seed(0)
    m1 = Tiny()
    b1, h1 = graft_looped_blocks(m1, max_loops=2, inner_dim=16, latent_channels=4, schema=s1)
    assert all(b.schema_hash == s1.schema_hash() for b in b1)
    path = tmp_path / "c.safetensors"
    save_loop_checkpoint(b1, h1, str(path))
    m2 = Tiny()
    b2, h2 = graft_looped_blocks(m2, max_loops=2, inner_dim=16, latent_channels=4, schema=s2)
    with pytest.raises(CheckpointError, match="schema"):
        load_loop_checkpoint(b2, h2, str(path))
    m3 = Tiny()
    b3, h3 = graft_looped_blocks(m3, max_loops=2, inner_dim=16, latent_channels=4, schema=s1)
    load_loop_checkpoint(b3, h3, str(path))


def _rewrite(path, out, tensors=None, meta=None):
    """Copy the loop checkpoint ``path`` to ``out`` with some tensors / header entries replaced."""
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        header = dict(f.metadata())
    t = load_file(str(path))
    t.update(tensors or {})
    header.update(meta or {})
    save_file(t, str(out), metadata=header)
    return str(out)


def _loop_values(blocks, head):
    return [p.detach().clone() for b in blocks for p in b.loop_parameters()] + [
        v.clone() for v in head.state_dict().values()
    ]


def test_non_finite_values_refused_and_model_untouched(tmp_path):
    _, blocks, head = grafted()
    path = tmp_path / "c.safetensors"
    save_loop_checkpoint(blocks, head, str(path))
    bad = _rewrite(path, tmp_path / "nan.safetensors", {"blocks.1.loop_gate": torch.tensor([0.0, float("nan")])})
    _, b2, h2 = grafted(seed=3)
    before = _loop_values(b2, h2)
    with pytest.raises(CheckpointError, match=r"'blocks.1.loop_gate' holds NaN"):
        load_loop_checkpoint(b2, h2, bad)
    assert all(torch.equal(a, b) for a, b in zip(before, _loop_values(b2, h2)))


def test_unexpected_tensors_refused(tmp_path):
    _, blocks, head = grafted()
    path = tmp_path / "c.safetensors"
    save_loop_checkpoint(blocks, head, str(path))
    bad = _rewrite(path, tmp_path / "extra.safetensors", {"blocks.7.loop_emb": torch.zeros(3, 16)})
    with pytest.raises(CheckpointError, match=r"blocks\.7\.loop_emb"):
        load_loop_checkpoint(blocks, head, bad)


@pytest.mark.parametrize("structure", ["[1, 2]", '{"blocks": 3, "head": {}}', '"x"'])
def test_corrupt_structure_header_refused(tmp_path, structure):
    _, blocks, head = grafted()
    path = tmp_path / "c.safetensors"
    save_loop_checkpoint(blocks, head, str(path))
    bad = _rewrite(path, tmp_path / "s.safetensors", meta={"structure": structure, "structure_hash": "0" * 64})
    with pytest.raises(CheckpointError, match="corrupt header"):
        load_loop_checkpoint(blocks, head, bad)


def test_missing_or_extra_head_named_clearly(tmp_path):
    _, blocks, head = grafted()
    path = tmp_path / "c.safetensors"
    save_loop_checkpoint(blocks, head, str(path))
    with pytest.raises(CheckpointError, match="holds an action head but none was given"):
        load_loop_checkpoint(blocks, None, str(path))
    no_head = tmp_path / "nohead.safetensors"
    save_loop_checkpoint(blocks, None, str(no_head))
    with pytest.raises(CheckpointError, match="checkpoint holds none"):
        load_loop_checkpoint(blocks, head, str(no_head))
    load_loop_checkpoint(blocks, None, str(no_head))


def test_a_missing_folder_is_refused_like_every_writer(tmp_path):
    """save_loop_checkpoint refuses a path inside a missing folder (it used to create it), with the
    message style of the canvas checkpoint and the other writers; nothing is created."""
    from canvas_core._safe_write import check_write_target

    _, blocks, head = grafted()
    path = tmp_path / "no" / "such" / "loops.safetensors"
    with pytest.raises(CheckpointError) as loop_err:
        save_loop_checkpoint(blocks, head, str(path))
    msg = str(loop_err.value)
    assert "the loop checkpoint" in msg and "does not exist; create it first" in msg
    assert str(tmp_path / "no" / "such") in msg
    assert not (tmp_path / "no").exists()
    with pytest.raises(CheckpointError) as shared:  # the check every writer of canvas-core runs
        check_write_target(str(path), "the loop checkpoint", error=CheckpointError)
    assert str(shared.value) == msg
    (tmp_path / "no" / "such").mkdir(parents=True)
    save_loop_checkpoint(blocks, head, str(path))  # once created, the same call writes
    assert path.is_file()
