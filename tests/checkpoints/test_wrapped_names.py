"""Checkpoint names are the plain model's whatever wraps it: ``DataParallel`` /
``DistributedDataParallel`` (``module.``), ``torch.compile`` (``_orig_mod``), in any order, both
ways; files written before this by a DDP-wrapped model (``module.`` names) still load; a
submodule that happens to be called ``module`` keeps its name.  (DDP itself and sequence
parallelism need a process group: tests/distributed/test_wrapped_models.py.)"""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from canvas_core import CanvasAttention, load_canvas_checkpoint, read_canvas_checkpoint_header
from canvas_core import save_canvas_checkpoint
from canvas_core.errors import CheckpointError
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection

LAYOUT = CanvasLayout(T=2, spatial_shape=(2, 2), d_model=8, regions={"v": (0, 2, 0, 2, 0, 2)})
SCHEMA = CanvasSchema(layout=LAYOUT, topology=CanvasTopology(connections=[Connection("v", "v")]))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = CanvasAttention(SCHEMA.topology, LAYOUT, n_heads=2)
        self.module = nn.Linear(8, 3)  # a submodule called like DDP's attribute: not a wrapper


def _model(seed):
    torch.manual_seed(seed)
    return Model()


def _keys(path):
    with safe_open(str(path), "pt") as f:
        return sorted(f.keys())


def _inner(m):
    while not isinstance(m, Model):
        m = m.module if isinstance(m, nn.DataParallel) else m._orig_mod
    return m


def _wraps(kind, m):
    if kind == "dp":
        return nn.DataParallel(m)
    if kind == "compiled_dp":
        return torch.compile(nn.DataParallel(m), backend="eager")
    return nn.DataParallel(torch.compile(m, backend="eager"))


@pytest.mark.parametrize("kind", ["dp", "compiled_dp", "dp_compiled"])
def test_a_wrapped_model_saves_and_loads_under_the_plain_names(tmp_path, kind):
    plain_keys = sorted(_model(0).state_dict())
    assert "module.weight" in plain_keys
    path = tmp_path / "m.safetensors"
    save_canvas_checkpoint(_wraps(kind, _model(0)), path, SCHEMA)
    assert _keys(path) == plain_keys
    assert read_canvas_checkpoint_header(path)["model_class"] == "Model"
    plain = _model(1)
    load_canvas_checkpoint(plain, path, SCHEMA)  # wrapped -> plain
    for k, v in _model(0).state_dict().items():
        assert torch.equal(plain.state_dict()[k], v), k
    wrapped = _wraps(kind, _model(2))
    load_canvas_checkpoint(wrapped, path, SCHEMA)  # and into a wrapped model
    for k, v in _model(0).state_dict().items():
        assert torch.equal(_inner(wrapped).state_dict()[k], v), k


def test_a_file_with_the_old_ddp_names_still_loads(tmp_path):
    path = tmp_path / "m.safetensors"
    save_canvas_checkpoint(_model(0), path, SCHEMA)
    with safe_open(str(path), "pt") as f:
        header, tensors = dict(f.metadata()), {"module." + k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata=header)  # as a DDP-wrapped model was saved before
    plain = _model(1)
    load_canvas_checkpoint(plain, path, SCHEMA)
    assert torch.equal(plain.module.weight, _model(0).module.weight)


def test_the_names_helpers():
    from canvas_core.runtime.compiled_names import plain_name, plain_names, wrapped_paths

    m = _model(0)
    assert wrapped_paths(m) == frozenset()
    assert plain_names(m, ["module.weight"]) == {"module.weight": "module.weight"}
    dp = nn.DataParallel(m)
    assert wrapped_paths(dp) == frozenset({"module"})
    assert plain_names(dp, ["module.module.weight", "module.attn.qkv.weight"]) == {
        "module.module.weight": "module.weight", "module.attn.qkv.weight": "attn.qkv.weight"}
    assert plain_name("a._orig_mod.b") == "a.b" and plain_name("") == ""
    assert _inner(torch.compile(dp, backend="eager")) is m


def test_two_tensors_with_one_plain_name_are_refused(tmp_path):
    m = _model(0)
    m.register_module("_orig_mod", nn.Linear(8, 3))  # "_orig_mod.weight" -> "weight", as "weight" below
    m.register_parameter("weight", nn.Parameter(torch.zeros(3, 8)))
    with pytest.raises(CheckpointError, match="both read 'weight'.*rename"):
        save_canvas_checkpoint(m, tmp_path / "m.safetensors", SCHEMA)
    assert not (tmp_path / "m.safetensors").exists()
