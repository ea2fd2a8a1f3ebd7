"""Canvas-model checkpoints: weights + schema JSON + hash (safetensors); a model or schema of another
canvas is refused naming what differs, and the model is left unchanged."""

import json
import pickle

import canvas_ref_strategies as gen  # registered by tests/conftest.py
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from torch import nn

from canvas_core import (
    CanvasAttention,
    SpatiotemporalCanvas,
    load_canvas_checkpoint,
    read_canvas_checkpoint_header,
    save_canvas_checkpoint,
)
from canvas_core.errors import CheckpointError
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection


def _schema(T=4, offsets=True, d=16, extra_region=False):
    regions = {"video": (0, T, 0, 2, 0, 2), "action": (0, T, 2, 3, 0, 1)}
    if extra_region:
        regions["reward"] = (0, T, 2, 3, 1, 2)
    layout = CanvasLayout(T=T, spatial_shape=(3, 2), d_model=d, regions=regions)
    kw = dict(t_src=0, t_dst=-1) if offsets else {}
    topo = CanvasTopology(connections=[Connection("video", "video"), Connection("action", "video", **kw)])
    return CanvasSchema(layout=layout, topology=topo)


class Model(nn.Module):
    def __init__(self, schema, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.canvas = SpatiotemporalCanvas(schema.layout)
        self.attn = CanvasAttention(schema.topology, schema.layout, n_heads=2)
        self.head = nn.Linear(schema.layout.d_model, 3)


def _params(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_round_trip_exact_with_header(tmp_path):
    s = _schema()
    m = Model(s, seed=0)
    path = tmp_path / "model.safetensors"
    save_canvas_checkpoint(m, path, s, metadata={"step": 10})
    other = Model(s, seed=1)
    hdr = load_canvas_checkpoint(other, path, s)
    assert hdr["user_metadata"] == {"step": 10} and hdr["schema_hash"] == s.schema_hash()
    for k, v in m.state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k
    info = read_canvas_checkpoint_header(path)
    assert info["schema"] == s
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["schema"]) == s.to_dict()


@pytest.mark.parametrize("change, words", [
    (dict(offsets=False), ["connection action -> video", "t_dst"]),
    (dict(T=16), ["canvas frames T", "16"]),
    (dict(extra_region=True), ["reward"]),
])
def test_model_of_another_schema_refused_naming_the_difference(tmp_path, change, words):
    s = _schema()
    path = tmp_path / "m.safetensors"
    save_canvas_checkpoint(Model(s), path, s)
    s2 = _schema(**change)
    m2 = Model(s2, seed=3)
    before = _params(m2)
    with pytest.raises(CheckpointError) as e:
        load_canvas_checkpoint(m2, path, s2)
    for w in words:
        assert w in str(e.value)
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in before.items())  # unchanged
    # strict load_state_dict stays canvas-engineering compatible (no schema in the keys);
    # the documented path is the one that knows the schema


def test_schema_that_does_not_match_the_model_refused(tmp_path):
    s, s_no_offsets = _schema(), _schema(offsets=False)
    m = Model(s_no_offsets)
    with pytest.raises(CheckpointError, match="module 'attn' was built from another canvas.*t_dst"):
        save_canvas_checkpoint(m, tmp_path / "x.safetensors", s)
    assert not (tmp_path / "x.safetensors").exists()
    save_canvas_checkpoint(m, tmp_path / "x.safetensors", s_no_offsets)
    with pytest.raises(CheckpointError, match="another canvas schema"):
        load_canvas_checkpoint(Model(s), tmp_path / "x.safetensors", s)


def test_bad_files_refused(tmp_path):
    s = _schema()
    m = Model(s)
    pk = tmp_path / "p.safetensors"
    pk.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_canvas_checkpoint(m, pk, s)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_canvas_checkpoint(m, tmp_path / "none.safetensors", s)
    from canvas_core.looping import graft_looped_blocks, save_loop_checkpoint

    class G(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(4, 4)])

    blocks, head = graft_looped_blocks(G(), max_loops=2, inner_dim=4, latent_channels=4)
    save_loop_checkpoint(blocks, head, tmp_path / "loops.safetensors")
    with pytest.raises(CheckpointError, match="load_loop_checkpoint"):
        load_canvas_checkpoint(m, tmp_path / "loops.safetensors", s)


def test_nan_weights_refused_before_touching_the_file(tmp_path):
    s = _schema()
    m = Model(s)
    path = tmp_path / "m.safetensors"
    save_canvas_checkpoint(m, path, s)
    before = path.read_bytes()
    with torch.no_grad():
        m.head.weight[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match="head.weight"):
        save_canvas_checkpoint(m, path, s)
    assert path.read_bytes() == before


def test_other_model_class_refused(tmp_path):
    s = _schema()
    save_canvas_checkpoint(Model(s), tmp_path / "m.safetensors", s)
    other = nn.Sequential(SpatiotemporalCanvas(s.layout))
    with pytest.raises(CheckpointError, match="missing tensors|unexpected tensors"):
        load_canvas_checkpoint(other, tmp_path / "m.safetensors", s)


@st.composite
def _schemas(draw):
    layout = draw(gen.layouts())
    return CanvasSchema(layout=layout, topology=draw(gen.topologies(layout)))


@settings(max_examples=40, deadline=None)
@given(_schemas(), _schemas())
def test_differences_are_empty_exactly_when_the_hashes_agree(a, b):
    from canvas_core.checkpoints import schema_differences

    assert schema_differences(a.to_dict(), a.to_dict()) == []
    diffs = schema_differences(a.to_dict(), b.to_dict())
    assert (diffs == []) == (a.schema_hash() == b.schema_hash())


def test_a_compiled_models_checkpoint_loads_into_the_plain_model_and_back(tmp_path):
    """``torch.compile``'s wrapper puts ``_orig_mod.`` in every state-dict name (whole model) or in
    the middle of some (compiled blocks); files hold the plain names, so a checkpoint saved while
    training compiled loads into the plain model for evaluation, and the other way round."""
    s = _schema()
    plain, other = Model(s, seed=0), Model(s, seed=1)
    whole = torch.compile(Model(s, seed=2), backend="eager")
    parts = Model(s, seed=3)
    parts.attn = torch.compile(parts.attn, backend="eager")  # a compiled block: "attn._orig_mod.qkv.weight"
    assert any("_orig_mod" in k for k in parts.state_dict())
    for src, dst in ((whole, plain), (plain, whole), (parts, other), (other, parts), (whole, parts)):
        path = tmp_path / "m.safetensors"
        save_canvas_checkpoint(src, path, s)
        with safe_open(str(path), "pt") as f:
            assert sorted(f.keys()) == sorted(Model(s).state_dict())  # the plain names
            assert f.metadata()["model_class"] == "Model"
        load_canvas_checkpoint(dst, path, s)
        want = {k.replace("_orig_mod.", ""): v for k, v in src.state_dict().items()}
        got = {k.replace("_orig_mod.", ""): v for k, v in dst.state_dict().items()}
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickles_are_told_from_safetensors_files_whose_header_length_starts_like_one(protocol, tmp_path):
    from canvas_core.checkpoints.tensors import pickled

    assert pickled(pickle.dumps({"a": [1, 2]}, protocol=protocol)[:8])
    torch.save({"w": torch.ones(2)}, tmp_path / "t.pt")
    assert pickled((tmp_path / "t.pt").read_bytes()[:8])
    for n in (0x0480, 0x0280, 0x0380, 0x0580, 0x10580):  # header lengths whose bytes begin 80 0k
        assert not pickled(n.to_bytes(8, "little"))


def test_a_truncated_checkpoint_is_called_truncated_not_a_pickle(tmp_path):
    """A safetensors header of 0x?80 bytes starts the file with 0x80, like a pickle: a copy cut
    short is reported as truncated."""
    for extra in range(300):  # a region name of the length that makes the header length end in 0x80
        name = "r" + "x" * extra
        layout = CanvasLayout(T=2, spatial_shape=(2, 2), d_model=16, regions={name: (0, 2, 0, 2, 0, 2)})
        s = CanvasSchema(layout=layout, topology=CanvasTopology(connections=[Connection(name, name)]))
        m = nn.Sequential(CanvasAttention(s.topology, layout, n_heads=2))
        path = tmp_path / "m.safetensors"
        save_canvas_checkpoint(m, path, s)
        data = path.read_bytes()
        if data[0] == 0x80:
            break
    assert data[0] == 0x80
    path.write_bytes(data[:-1])
    with pytest.raises(CheckpointError, match="truncated") as err:
        load_canvas_checkpoint(m, path, s)
    assert "pickle" not in str(err.value)


def test_numbers_python_refuses_to_read_are_format_errors(tmp_path):
    from canvas_core.errors import SchemaFormatError

    s = _schema()
    text = s.to_json().replace('"T": 4', '"T": ' + "9" * 5000, 1)
    assert "9" * 5000 in text
    with pytest.raises(SchemaFormatError, match="number of 5,000 digits at line .*far too large"):
        CanvasSchema.from_json(text)
    path = tmp_path / "m.safetensors"
    save_canvas_checkpoint(Model(s), path, s)
    with safe_open(str(path), "pt") as f:
        header = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header["schema"] = header["schema"].replace('"T": 4', '"T": ' + "9" * 5000, 1)
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=header)
    with pytest.raises(CheckpointError, match="corrupt header"):
        read_canvas_checkpoint_header(path)


def test_a_model_on_the_meta_device_is_refused_naming_it(tmp_path):
    s = _schema()
    with torch.device("meta"):
        m = Model(s)
    with pytest.raises(CheckpointError, match="meta device"):
        save_canvas_checkpoint(m, tmp_path / "m.safetensors", s)
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("bad, words", [({1: 2}, "metadata key 1 at metadata is a int"),
                                        ({"a": {2: "x"}}, r"metadata key 2 at metadata\['a'\]"),
                                        ({"loss": float("nan")}, "finite numbers"),
                                        ({"obj": object()}, "JSON-serialisable")])
def test_metadata_that_would_not_read_back_as_given_is_refused(bad, words, tmp_path):
    """Both checkpoint kinds: JSON turns int keys into strings and has no NaN; refused before
    anything is written."""
    from canvas_core.looping import graft_looped_blocks, save_loop_checkpoint

    s = _schema()
    with pytest.raises(CheckpointError, match=words):
        save_canvas_checkpoint(Model(s), tmp_path / "m.safetensors", s, metadata=bad)

    class G(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(4, 4)])

    blocks, head = graft_looped_blocks(G(), max_loops=2, inner_dim=4, latent_channels=4)
    with pytest.raises(CheckpointError, match=words):
        save_loop_checkpoint(blocks, head, tmp_path / "l.safetensors", metadata=bad)
    assert not list(tmp_path.iterdir())
