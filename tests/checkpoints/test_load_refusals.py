"""Loads that used to pass silently or blame the wrong cause: a model on the meta device is
refused (a copy into it does nothing), and a text / JSON file given as a checkpoint is called
what it is, not a truncated safetensors file (a truncated one still is)."""

import warnings

import pytest
import torch
from torch import nn

from canvas_core import CanvasAttention, load_canvas_checkpoint, load_loop_checkpoint, read_canvas_checkpoint_header
from canvas_core import save_canvas_checkpoint
from canvas_core.errors import CheckpointError
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection

LAYOUT = CanvasLayout(T=2, spatial_shape=(2, 2), d_model=8, regions={"v": (0, 2, 0, 2, 0, 2)})
SCHEMA = CanvasSchema(layout=LAYOUT, topology=CanvasTopology(connections=[Connection("v", "v")]))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = CanvasAttention(SCHEMA.topology, LAYOUT, n_heads=2)
        self.head = nn.Linear(8, 3)


def test_loading_into_a_model_on_the_meta_device_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    source = Model()
    save_canvas_checkpoint(source, path, SCHEMA)
    with torch.device("meta"):
        model = Model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "copying into a meta parameter is a no-op"
        with pytest.raises(CheckpointError, match=r"\['attn.qkv.weight'.* on the meta device.*to_empty") as err:
            load_canvas_checkpoint(model, path, SCHEMA)
    assert "more" in str(err.value) and "head.bias" not in str(err.value)  # five named, the rest counted
    assert model.head.weight.is_meta
    model.to_empty(device="cpu")  # the fix the error names: then every saved tensor is loaded
    load_canvas_checkpoint(model, path, SCHEMA)
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def _loaders(path):
    return [lambda: read_canvas_checkpoint_header(path), lambda: load_canvas_checkpoint(Model(), path, SCHEMA),
            lambda: load_loop_checkpoint([], None, path)]


@pytest.mark.parametrize("content, says", [
    (b'{"this is": "a JSON file, not a checkpoint"}\n', "it starts with text '{\"this is\": \"a JSON file' (a JSON file?)"),
    (b"step 1000: loss 0.25\n", "it starts with text 'step 1000: loss 0.25\\n'"),
    (bytes(range(1, 40)), "its first bytes (01 02 03 04 05 06 07 08) are not the 8-byte header length"),
    (b"", "it is empty (0 bytes)"),
])
def test_a_file_that_is_no_safetensors_file_is_called_so(tmp_path, content, says):
    path = tmp_path / "notes.safetensors"
    path.write_bytes(content)
    for load in _loaders(str(path)):
        with pytest.raises(CheckpointError) as err:
            load()
        msg = str(err.value)
        assert "nor any safetensors file" in msg and says in msg, msg
        assert "truncated" not in msg


def test_a_cut_safetensors_file_is_still_called_truncated(tmp_path):
    full = tmp_path / "full.safetensors"
    save_canvas_checkpoint(Model(), full, SCHEMA)
    data = full.read_bytes()
    n = int.from_bytes(data[:8], "little")
    for cut in (3, 8, 9, 8 + n // 2, 8 + n, len(data) - 1):  # in the length, the header, the tensors
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(data[:cut])
        for load in _loaders(str(path)):
            with pytest.raises(CheckpointError, match="truncated") as err:
                load()
            assert "nor any safetensors file" not in str(err.value)


def _with_schema_json(path, body):
    """Rewrite ``path``'s header so that its schema is ``body`` with a matching schema_hash."""
    import hashlib
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        header = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header["schema"] = json.dumps(body)
    core = {k: v for k, v in body.items() if k != "metadata"}
    header["schema_hash"] = hashlib.sha256(json.dumps(core, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    save_file(tensors, str(path), metadata=header)


@pytest.mark.parametrize("change", ["layout is a number", "regions is a list", "topology is a dict",
                                    "a region is a string", "layout only"])
def test_a_header_schema_of_the_wrong_structure_is_a_checkpoint_error(tmp_path, change):
    path = tmp_path / "m.safetensors"
    torch.manual_seed(0)
    save_canvas_checkpoint(Model(), path, SCHEMA)
    good = SCHEMA.to_dict()
    body = {"layout is a number": {"layout": 1},
            "regions is a list": {**good, "regions": [["v", [0, 2, 0, 2, 0, 2]]]},
            "topology is a dict": {**good, "topology": {"src": "v"}},
            "a region is a string": {**good, "regions": {"v": "everywhere"}},
            "layout only": {"layout": 7, "regions": 3}}[change]
    _with_schema_json(path, body)
    model = Model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for load in _loaders(path)[:2]:
        with pytest.raises(CheckpointError, match="corrupt header.*not a canvas schema.*save_canvas_checkpoint"):
            load()
    with pytest.raises(CheckpointError, match="corrupt header"):
        load_canvas_checkpoint(model, path, SCHEMA)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_schema_differences_names_a_part_of_the_wrong_kind():
    from canvas_core.checkpoints import schema_differences

    good = SCHEMA.to_dict()
    assert schema_differences({"layout": 1}, good) == [
        "the 'layout' of the checkpoint is a int, not a JSON object: not a canvas schema"]
    assert "not a JSON array" in schema_differences({**good, "topology": {"a": 1}}, good)[0]
    assert schema_differences({**good, "regions": {"v": "x"}}, good)[0].startswith("region 'v' differs")
    assert schema_differences(good, good) == []
