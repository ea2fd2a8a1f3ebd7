"""ProgramCompiler's compile-mode passes (seed 002): freeze, constant, export, dead elimination.

Checked on a real ``nn.Module`` whose ``regions`` is an ``nn.ModuleDict``.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from canvas_core.compiler import CompiledProgram, ProgramCompiler
from canvas_core.errors import CanvasError, CanvasTypeError, CompileError
from canvas_core.program import CanvasProgram, RegionProgram
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection

REGIONS = {
    "vision": (0, 2, 0, 2, 0, 4),
    "belief": (0, 2, 2, 3, 0, 2),
    "memory": (0, 2, 2, 3, 2, 4),
    "action": (0, 2, 3, 4, 0, 4),
    "error": (0, 1, 2, 3, 4, 5),
}


def make_schema():
    layout = CanvasLayout(T=2, H=4, W=5, d_model=16, regions=dict(REGIONS))
    topology = CanvasTopology.dense(list(REGIONS))
    return CanvasSchema(layout=layout, topology=topology)


def make_program(modes=None):
    modes = modes if modes is not None else {
        "vision": "freeze", "belief": "runtime", "memory": "export", "action": "freeze", "error": "constant",
    }
    return CanvasProgram(
        schema=make_schema(),
        regions={name: RegionProgram(compile_mode=mode) for name, mode in modes.items()},
    )


class RegionModel(nn.Module):
    """A model organized by region, as the compiler expects."""

    def __init__(self, names=tuple(REGIONS)):
        super().__init__()
        torch.manual_seed(0)
        self.regions = nn.ModuleDict({
            n: nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3)) for n in names
        })
        self.head = nn.Linear(3, 1)

    def forward(self, x):
        return self.head(sum(m(x) for m in self.regions.values()))


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---- passes without a module -----------------------------------------------------------------
def test_seed_walkthrough_sets_and_reduced_schema():
    program = make_program()
    compiled = ProgramCompiler(program).compile()
    assert isinstance(compiled, CompiledProgram)
    assert compiled.frozen_regions == {"vision", "action"}
    assert compiled.constant_regions == {"error"}
    assert compiled.exported_memories == {"memory"}
    assert compiled.active_regions == {"vision", "belief", "action"}
    assert compiled.all_regions == set(REGIONS)
    assert compiled.n_eliminated == 2
    # dead elimination, against an obvious filter of the original topology (order kept)
    expected = [c for c in program.schema.topology.connections
                if c.src in compiled.active_regions and c.dst in compiled.active_regions]
    assert compiled.active_connections == expected
    assert len(expected) == 9
    # reduced schema: only active regions, same canvas, same connections
    layout = compiled.schema.layout
    assert set(layout.regions) == compiled.active_regions
    assert (layout.T, layout.spatial_shape, layout.d_model) == (2, (4, 5), 16)
    for name in layout.regions:
        assert layout.regions[name] == program.schema.layout.regions[name]
    assert list(compiled.schema.topology.connections) == expected
    # nothing applied without a module
    assert compiled.constant_buffers == {} and compiled.exported_paths == {}
    # summary in canvas-engineering's shape
    text = compiled.summary()
    assert "frozen: ['action', 'vision']" in text and "eliminated: 2 regions" in text


def test_regions_without_program_are_runtime():
    program = CanvasProgram(schema=make_schema(), regions={"memory": RegionProgram(compile_mode="export")})
    compiled = ProgramCompiler(program).compile()
    assert compiled.active_regions == set(REGIONS) - {"memory"}
    assert compiled.frozen_regions == set() and compiled.n_eliminated == 1


def test_schema_accepted_and_all_runtime():
    compiled = ProgramCompiler(make_schema()).compile()
    assert compiled.active_regions == set(REGIONS) and compiled.n_eliminated == 0
    assert len(compiled.active_connections) == len(REGIONS) ** 2


def test_schema_without_topology():
    schema = CanvasSchema(layout=make_schema().layout)
    compiled = ProgramCompiler(CanvasProgram(schema=schema, regions={"error": RegionProgram(compile_mode="constant")})).compile()
    assert compiled.schema.topology is None and compiled.active_connections == []
    assert compiled.plan is not None and compiled.plan.resolutions == {}


# ---- passes applied to a module ----------------------------------------------------------------
def test_module_freeze_constant_export(tmp_path):
    from safetensors.torch import load_file

    program = make_program()
    model = RegionModel()
    before = {n: _params(m) for n, m in model.regions.items()}
    compiled = ProgramCompiler(program).compile(module=model, export_dir=str(tmp_path))

    # freeze: parameters stay parameters, without gradient
    for name in ("vision", "action"):
        params = list(model.regions[name].parameters())
        assert params and all(not p.requires_grad for p in params)
    assert all(p.requires_grad for p in model.regions["belief"].parameters())
    assert all(p.requires_grad for p in model.head.parameters())

    # constant: no parameters left, same-valued buffers under the same state_dict keys
    err = model.regions["error"]
    assert list(err.parameters()) == []
    bufs = dict(err.named_buffers())
    assert set(bufs) == set(before["error"])
    for k, v in before["error"].items():
        assert torch.equal(bufs[k], v) and not bufs[k].requires_grad
        assert torch.equal(err.state_dict()[k], v)
    assert set(compiled.constant_buffers) == {"error"}
    assert set(compiled.constant_buffers["error"]) == set(before["error"])
    for k, v in before["error"].items():
        assert torch.equal(compiled.constant_buffers["error"][k], v)
    # gradients no longer flow into the constant region, but still through it to its input
    x = torch.randn(5, 4, requires_grad=True)
    model.regions["error"](x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # the whole model's state_dict still holds every key with the same values
    sd = model.state_dict()
    for name in REGIONS:
        for k, v in before[name].items():
            assert torch.equal(sd[f"regions.{name}.{k}"], v)

    # export: a safetensors file (+ JSON sidecar) holding exactly the weights
    path = compiled.exported_paths["memory"]
    assert set(compiled.exported_paths) == {"memory"}
    assert os.path.dirname(path) == str(tmp_path) and path.endswith(".safetensors")
    loaded = load_file(path)
    assert set(loaded) == set(before["memory"])
    for k, v in before["memory"].items():
        assert torch.equal(loaded[k], v)
    with open(path, "rb") as fh:  # safetensors layout: u64 header length + JSON header, no pickle
        raw = fh.read()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hlen])
    meta = header["__metadata__"]
    assert meta["region"] == "memory"
    assert meta["schema_hash"] == program.schema.schema_hash()
    assert meta["version_torch"] == torch.__version__
    assert b"\x80\x02" not in raw[:2] and not raw.startswith(b"PK")  # not a pickle / torch zip
    with open(path[: -len(".safetensors")] + ".json", encoding="utf-8") as fh:
        sidecar = json.load(fh)
    assert sidecar["region"] == "memory" and sidecar["schema_hash"] == meta["schema_hash"]
    assert sorted(sidecar["tensors"]) == sorted(before["memory"])
    assert all(not p.requires_grad for p in model.regions["memory"].parameters())

    # an optimizer over what still trains sees only runtime regions and the head
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    expected = {id(p) for p in model.regions["belief"].parameters()} | {id(p) for p in model.head.parameters()}
    assert trainable == expected


def test_parameterdict_regions(tmp_path):
    from safetensors.torch import load_file

    class Banks(nn.Module):
        def __init__(self):
            super().__init__()
            self.regions = nn.ParameterDict({n: nn.Parameter(torch.randn(3, 2)) for n in REGIONS})

    model = Banks()
    before = {n: p.detach().clone() for n, p in model.regions.items()}
    compiled = ProgramCompiler(make_program()).compile(module=model, export_dir=tmp_path)
    assert torch.equal(compiled.constant_buffers["error"], before["error"])
    assert "regions.error" in dict(model.named_buffers())
    assert "regions.error" not in dict(model.named_parameters())
    assert torch.equal(model.state_dict()["regions.error"], before["error"])
    assert not model.regions["vision"].requires_grad and model.regions["belief"].requires_grad
    assert torch.equal(load_file(compiled.exported_paths["memory"])["weight"], before["memory"])


def test_default_export_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    compiled = ProgramCompiler(make_program()).compile(module=RegionModel())
    assert compiled.exported_paths["memory"] == str(tmp_path / "canvas_exports" / "memory.safetensors")
    assert os.path.isfile(compiled.exported_paths["memory"])


def test_no_export_dir_created_without_exports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ProgramCompiler(make_program({"vision": "freeze"})).compile(module=RegionModel())
    assert not (tmp_path / "canvas_exports").exists()


def test_runtime_regions_need_no_submodule(tmp_path):
    model = RegionModel(names=("vision", "memory", "error", "action"))  # no "belief": runtime
    compiled = ProgramCompiler(make_program()).compile(module=model, export_dir=tmp_path)
    assert compiled.exported_memories == {"memory"}


# ---- errors -------------------------------------------------------------------------------------
def test_module_without_regions():
    with pytest.raises(CanvasTypeError, match="no 'regions' attribute"):
        ProgramCompiler(make_program()).compile(module=nn.Linear(2, 2))


def test_module_not_a_module():
    with pytest.raises(CanvasTypeError, match="nn.Module"):
        ProgramCompiler(make_program()).compile(module={"regions": {}})


def test_regions_not_a_mapping():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.regions = nn.ModuleList([nn.Linear(2, 2)])

    with pytest.raises(CanvasTypeError, match="must map region names"):
        ProgramCompiler(make_program()).compile(module=Bad())


def test_missing_region_submodule_is_named_and_nothing_changes(tmp_path):
    model = RegionModel(names=("vision", "belief", "error", "action"))  # "memory" (export) missing
    with pytest.raises(CompileError, match="'memory'.*export"):
        ProgramCompiler(make_program()).compile(module=model, export_dir=tmp_path)
    # checked before anything was applied
    assert all(p.requires_grad for p in model.parameters())
    assert list(tmp_path.iterdir()) == []


def test_unknown_compile_mode():
    rp = RegionProgram()
    object.__setattr__(rp, "compile_mode", "freez")  # bypass RegionProgram's own validation
    program = CanvasProgram(schema=make_schema(), regions={"vision": rp})
    with pytest.raises(CompileError, match="'vision'.*'freez'.*Did you mean 'freeze'"):
        ProgramCompiler(program).compile()


def test_export_dir_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CompileError, match="export_dir"):
        ProgramCompiler(make_program()).compile(module=RegionModel(), export_dir=str(blocker))
    with pytest.raises(CompileError, match="export_dir"):
        ProgramCompiler(make_program()).compile(module=RegionModel(), export_dir=str(blocker / "sub"))


def test_bad_program_and_target():
    with pytest.raises(CanvasTypeError, match="CanvasProgram"):
        ProgramCompiler({"schema": 1})
    with pytest.raises(CompileError, match="dtype"):
        ProgramCompiler(make_program()).compile(dtype="int8")
    with pytest.raises(CompileError, match="device"):
        ProgramCompiler(make_program()).compile(device="not a device")
    with pytest.raises(CompileError, match="n_heads"):
        ProgramCompiler(make_program()).compile(n_heads=3)


def test_compiler_layer_imports_no_torch():
    code = ("import sys, canvas_core.compiler as c; from canvas_core.compiler import ProgramCompiler, "
            "CompiledProgram, ExecutionPlan, lower, block_mask, resolve_plan, ResolvedGroup; "
            "import canvas_core.compiler.resolution, canvas_core.compiler.report, canvas_core.compiler.passes; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- property: compile never raises anything but a CanvasError, sets are consistent -------------
@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(["runtime", "freeze", "constant", "export", None]),
                min_size=len(REGIONS), max_size=len(REGIONS)),
       st.lists(st.tuples(st.sampled_from(list(REGIONS)), st.sampled_from(list(REGIONS))), max_size=8))
def test_property_sets(modes, edges):
    layout = CanvasLayout(T=2, H=4, W=5, d_model=16, regions=dict(REGIONS))
    topology = CanvasTopology(connections=[Connection(s, d) for s, d in edges])
    schema = CanvasSchema(layout=layout, topology=topology)
    regions = {n: RegionProgram(compile_mode=m) for n, m in zip(REGIONS, modes) if m is not None}
    try:
        compiled = ProgramCompiler(CanvasProgram(schema=schema, regions=regions)).compile()
    except CanvasError:
        return
    mode_of = {n: (m or "runtime") for n, m in zip(REGIONS, modes)}
    assert compiled.frozen_regions == {n for n, m in mode_of.items() if m == "freeze"}
    inactive = {n for n, m in mode_of.items() if m in ("constant", "export")}
    assert compiled.active_regions == set(REGIONS) - inactive
    assert compiled.n_eliminated == len(inactive)
    assert [(c.src, c.dst) for c in compiled.active_connections] == [
        (s, d) for s, d in edges if s not in inactive and d not in inactive]
    assert set(compiled.schema.layout.regions) == compiled.active_regions
    assert set(compiled.resolutions) == set(range(len(compiled.active_connections)))


def test_constant_keeps_existing_buffers_and_is_idempotent(tmp_path):
    class WithNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.regions = nn.ModuleDict({n: nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)) for n in REGIONS})

    model = WithNorm()
    model.regions["error"](torch.randn(8, 2))  # move the running statistics
    before = _params(model.regions["error"])
    program = make_program()
    first = ProgramCompiler(program).compile(module=model, export_dir=tmp_path)
    assert set(first.constant_buffers["error"]) == set(before)  # running stats included
    for k, v in before.items():
        assert torch.equal(first.constant_buffers["error"][k], v)
    second = ProgramCompiler(program).compile(module=model, export_dir=tmp_path)
    assert set(second.constant_buffers["error"]) == set(before)
    assert list(model.regions["error"].parameters()) == []


def test_export_file_names_are_unique(tmp_path):
    from safetensors.torch import load_file

    layout = CanvasLayout(T=1, H=1, W=2, d_model=4, regions={"a/b": (0, 1, 0, 1, 0, 1), "a_b": (0, 1, 0, 1, 1, 2)})
    program = CanvasProgram(schema=CanvasSchema(layout=layout, topology=CanvasTopology.dense(["a/b", "a_b"])),
                            regions={"a/b": RegionProgram(compile_mode="export"),
                                     "a_b": RegionProgram(compile_mode="export")})
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(1, 1), nn.Linear(1, 2)

        @property
        def regions(self):  # a plain dict works too
            return {"a/b": self.a, "a_b": self.b}

    model = Plain()
    compiled = ProgramCompiler(program).compile(module=model, export_dir=tmp_path)
    paths = compiled.exported_paths
    assert len(set(paths.values())) == 2
    assert load_file(paths["a/b"])["weight"].shape == (1, 1)
    assert load_file(paths["a_b"])["weight"].shape == (2, 1)
    assert compiled.active_regions == set() and compiled.active_connections == []


@pytest.mark.parametrize("mode", ["freeze", "constant"])
def test_a_weight_shared_by_regions_of_different_modes_is_warned_about(mode):
    """Compile modes act on parameters: a frozen tied weight stops the runtime region learning, a
    constant one unties it. Neither may happen silently."""
    import warnings

    from torch import nn

    from canvas_core import CanvasLayout, CanvasProgram, CanvasSchema, CanvasTopology, Connection, ProgramCompiler
    from canvas_core.program import RegionProgram

    layout = CanvasLayout(T=1, H=1, W=2, d_model=4, regions={"enc": (0, 1, 0, 1, 0, 1), "dec": (0, 1, 0, 1, 1, 2)})
    schema = CanvasSchema(layout=layout, topology=CanvasTopology([Connection("enc", "dec"), Connection("dec", "enc")]))

    class M(nn.Module):
        def __init__(self, tied):
            super().__init__()
            self.regions = nn.ModuleDict({"enc": nn.Linear(4, 4), "dec": nn.Linear(4, 4)})
            if tied:
                self.regions["dec"].weight = self.regions["enc"].weight

    program = CanvasProgram(schema=schema, regions={"enc": RegionProgram(compile_mode=mode)})
    for tied in (True, False):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            ProgramCompiler(program).compile(module=M(tied))
        shared = [w for w in seen if "shared by regions 'enc'" in str(w.message)]
        assert bool(shared) == tied


def test_a_constant_region_with_running_statistics_is_warned_about():
    import warnings

    from torch import nn

    from canvas_core import CanvasLayout, CanvasProgram, CanvasSchema, CanvasTopology, Connection, ProgramCompiler
    from canvas_core.program import RegionProgram

    layout = CanvasLayout(T=1, H=1, W=2, d_model=4, regions={"a": (0, 1, 0, 1, 0, 1), "b": (0, 1, 0, 1, 1, 2)})
    schema = CanvasSchema(layout=layout, topology=CanvasTopology([Connection("a", "b")]))

    class M(nn.Module):
        def __init__(self, norm):
            super().__init__()
            self.regions = nn.ModuleDict({"a": nn.Sequential(nn.Linear(4, 4), norm), "b": nn.Linear(4, 4)})

    program = CanvasProgram(schema=schema, regions={"a": RegionProgram(compile_mode="constant")})
    for norm, warned in ((nn.BatchNorm1d(4), True), (nn.LayerNorm(4), False)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            ProgramCompiler(program).compile(module=M(norm))
        assert any("running statistics" in str(w.message) for w in seen) == warned
