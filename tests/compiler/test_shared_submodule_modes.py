"""Compile modes on a module whose regions share one submodule object.

A constant region that shares its submodule with a learning region gets its own copy first: the
learning regions keep their parameters and the constant region keeps its values.  Weights tied
between separate modules stay in their modules, and the constant region's buffer is a copy.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from canvas_core.compiler import ProgramCompiler
from canvas_core.errors import CompileError
from canvas_core.program import CanvasProgram, RegionProgram
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection

torch.set_num_threads(1)

LAYOUT = CanvasLayout(T=1, H=1, W=3, d_model=8,
                      regions={"v": (0, 1, 0, 1, 0, 1), "m": (0, 1, 0, 1, 1, 2), "c": (0, 1, 0, 1, 2, 3)})
SCHEMA = CanvasSchema(LAYOUT, CanvasTopology([Connection("v", "c"), Connection("m", "v")]))


def _program(**modes):
    return CanvasProgram(schema=SCHEMA, regions={n: RegionProgram(compile_mode=m) for n, m in modes.items()})


def _compile(program, model, **kw):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        compiled = ProgramCompiler(program).compile(module=model, **kw)
    return compiled, [str(w.message) for w in seen]


class OneObject(nn.Module):
    """One nn.Linear under all three region names."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        shared = nn.Linear(8, 8)
        self.regions = nn.ModuleDict({"v": shared, "m": shared, "c": shared})


def _trainable(module):
    return [n for n, p in module.named_parameters() if p.requires_grad]


def test_constant_region_gets_its_own_copy_of_a_shared_submodule():
    model = OneObject()
    shared = model.regions["v"]
    weight = shared.weight
    keys = list(model.state_dict())
    compiled, messages = _compile(_program(c="constant"), model)
    assert any("shared by regions" in m and "'c' (constant)" in m for m in messages)
    # the learning regions keep the very same module and Parameter objects
    assert model.regions["v"] is shared and model.regions["m"] is shared
    assert model.regions["v"].weight is weight and _trainable(model.regions["v"]) == ["weight", "bias"]
    assert sum(p.numel() for p in model.parameters()) == 8 * 8 + 8
    # the constant region is a separate object holding buffers, under the same state_dict keys
    const = model.regions["c"]
    assert const is not shared and list(const.parameters()) == []
    assert sorted(n for n, _ in const.named_buffers()) == ["bias", "weight"]
    assert list(model.state_dict()) == keys
    assert torch.equal(compiled.constant_buffers["c"]["weight"], weight.detach())
    # training the learning regions leaves the constant region's values alone
    before = const.weight.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.regions["v"](torch.randn(4, 8)).square().sum().backward()
    opt.step()
    assert not torch.equal(model.regions["v"].weight.detach(), before)
    assert torch.equal(const.weight, before)


def test_a_submodule_shared_inside_the_entries_is_copied_for_the_constant_region_only():
    class Nested(nn.Module):
        def __init__(self):
            super().__init__()
            enc = nn.Linear(8, 8)
            self.regions = nn.ModuleDict({
                "v": nn.Sequential(enc, nn.Linear(8, 2)),
                "m": nn.Linear(8, 8),
                "c": nn.Sequential(enc, nn.ReLU(), enc, nn.Linear(8, 3)),
            })

    model = Nested()
    enc = model.regions["v"][0]
    own_head = model.regions["c"][3]
    _compile(_program(c="constant"), model)
    assert model.regions["v"][0] is enc and _trainable(enc) == ["weight", "bias"]
    const = model.regions["c"]
    assert const[0] is not enc and const[0] is const[2]  # sharing inside the region is kept
    assert const[3] is own_head  # what the region did not share is converted in place, as before
    assert list(const.parameters()) == [] and torch.equal(const[0].weight, enc.weight.detach())


def test_two_constant_regions_sharing_with_a_learning_one_share_one_copy():
    model = OneObject()
    shared = model.regions["v"]
    compiled, _ = _compile(_program(m="constant", c="constant"), model)
    assert model.regions["m"] is model.regions["c"] is not shared
    assert _trainable(model.regions["v"]) == ["weight", "bias"]
    assert set(compiled.constant_buffers) == {"m", "c"}


def test_constant_for_every_sharing_region_converts_in_place():
    model = OneObject()
    shared = model.regions["v"]
    _compile(_program(v="constant", m="constant", c="constant"), model)
    assert all(model.regions[n] is shared for n in "vmc") and list(model.parameters()) == []


def test_a_shared_entry_of_a_plain_dict_is_refused_before_anything_changes():
    class PlainDict(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Linear(8, 8)
            self.other = nn.Linear(8, 8)
            self._regions = {"v": self.shared, "m": self.other, "c": self.shared}

        @property
        def regions(self):
            return self._regions

    model = PlainDict()
    with pytest.raises(CompileError, match=r"region 'c'.*\['v'\].*nn.ModuleDict"):
        ProgramCompiler(_program(c="constant")).compile(module=model)
    assert model.regions["c"] is model.shared and _trainable(model) == ["shared.weight", "shared.bias",
                                                                        "other.weight", "other.bias"]


def test_a_failing_compile_leaves_the_shared_submodule_untouched(tmp_path):
    model = OneObject()
    shared = model.regions["v"]
    (tmp_path / "m.safetensors").mkdir()  # the export of 'm' cannot be written
    with pytest.raises(CompileError, match="'m'"):
        _compile(_program(m="export", c="constant"), model, export_dir=str(tmp_path))
    assert all(model.regions[n] is shared for n in "vmc")
    assert _trainable(shared) == ["weight", "bias"]


def test_freeze_of_a_shared_submodule_stops_every_region_using_it_and_says_so():
    model = OneObject()
    _, messages = _compile(_program(c="freeze"), model)
    assert any("'c' (freeze)" in m and "stop every region using it" in m for m in messages)
    assert all(model.regions[n] is model.regions["v"] for n in "mc") and _trainable(model) == []


def test_weights_tied_between_separate_modules_keep_their_modules():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            a, b, c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
            b.weight = a.weight
            c.weight = a.weight
            self.regions = nn.ModuleDict({"v": a, "m": b, "c": c})

    model = Tied()
    modules = [model.regions[n] for n in "vmc"]
    _, messages = _compile(_program(c="constant"), model)
    assert any("shared by regions" in m for m in messages)
    assert [model.regions[n] for n in "vmc"] == modules  # no copy: the modules were separate
    assert _trainable(model.regions["v"]) == ["weight", "bias"]
    assert sorted(n for n, _ in model.regions["c"].named_buffers()) == ["bias", "weight"]


def test_constant_buffer_of_a_tied_weight_does_not_follow_the_learning_region():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            a, c = nn.Linear(8, 8), nn.Linear(8, 8)
            c.weight = a.weight
            self.regions = nn.ModuleDict({"v": a, "c": c})

    model = Tied()
    _compile(CanvasProgram(schema=SCHEMA, regions={"c": RegionProgram(compile_mode="constant")}), model)
    constant, learning = model.regions["c"].weight.clone(), model.regions["v"].weight.clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model.regions["v"](torch.randn(2, 8)).square().sum().backward()
    opt.step()
    assert not torch.equal(model.regions["v"].weight, learning)  # the learning region trained
    assert torch.equal(model.regions["c"].weight, constant)  # the constant one kept its values
