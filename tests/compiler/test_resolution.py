"""The resolution pass and its report: requested type -> implementation + kernel on a target."""

from __future__ import annotations

import json

import pytest

from canvas_core.compiler import ProgramCompiler
from canvas_core.compiler.resolution import ConnectionResolution
from canvas_core.errors import CompileError, UnavailableError, UnknownNameError
from canvas_core.plugins.host import PluginHost, use_host
from canvas_core.program import CanvasProgram, RegionProgram
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection

REGIONS = {"obs": (0, 2, 0, 1, 0, 4), "state": (0, 2, 1, 2, 0, 4), "mem": (0, 2, 2, 3, 0, 4)}


def program(connections, modes=None):
    layout = CanvasLayout(T=2, H=3, W=4, d_model=16, regions=dict(REGIONS))
    schema = CanvasSchema(layout=layout, topology=CanvasTopology(connections=connections))
    return CanvasProgram(schema=schema, regions={n: RegionProgram(compile_mode=m) for n, m in (modes or {}).items()})


CONNS = [
    Connection("obs", "obs"),
    Connection("state", "obs", fn="linear_attention"),
    Connection("state", "mem", weight=0.5),
    Connection("mem", "state"),
]


class FakeKernel:  # never built: resolution only looks at the spec
    def __init__(self, *a, **k):
        raise AssertionError("resolution must not build kernels")


@pytest.fixture
def host():
    """An isolated plugin host: the core's builtins only (no installed entry points)."""
    with use_host(PluginHost(autoload=False)) as h:
        yield h


def test_resolution_records_requested_chosen_provider(host):
    compiled = ProgramCompiler(program(CONNS)).compile()
    res = compiled.plan.resolutions
    assert set(res) == {0, 1, 2, 3} and compiled.resolutions == res
    for i, conn in enumerate(CONNS):
        r = res[i]
        assert isinstance(r, ConnectionResolution)
        assert (r.src, r.dst) == (conn.src, conn.dst)
        assert r.requested == (conn.fn or "cross_attention")
        assert r.implementation == r.requested
        assert r.provider.startswith("canvas-core")
        assert (r.device, r.dtype) == ("cpu", "float32")
    # softmax attention runs on the reference kernel; linear attention runs its own module
    assert res[0].kernel == "reference" and res[0].kernel_provider.startswith("canvas-core")
    assert res[1].kernel == "module"
    assert not any(r.fallback for r in res.values())


def test_fake_cuda_kernel_rejected_with_reason(host):
    host.register("kernels", "fake_cuda", FakeKernel, supports=("cross_attention",), devices=("cuda",),
                  priority=50)
    compiled = ProgramCompiler(program(CONNS)).compile()
    r = compiled.plan.resolutions[0]
    assert r.kernel == "reference"
    rejected = dict(r.rejected)
    assert "fake_cuda" in rejected
    assert any("cuda" in reason and "cpu" in reason for reason in rejected["fake_cuda"])
    assert r.fallback and "fake_cuda" in r.note
    # linear attention is not affected by a softmax kernel
    assert compiled.plan.resolutions[1].rejected == [] and not compiled.plan.resolutions[1].fallback
    text = compiled.report()
    assert "fake_cuda (#0, #2, #3): runs on cuda only, not on cpu" in text
    assert "reference (fallback)" in text


def test_kernel_preference_honoured(host):
    host.register("kernels", "fake_any", "canvas_core.errors:NoSuchKernel", supports=("cross_attention",), priority=-5)
    compiled = ProgramCompiler(program(CONNS)).compile(kernel="fake_any")
    assert compiled.kernel == "fake_any"
    assert [compiled.plan.resolutions[i].kernel for i in range(4)] == ["fake_any", "module", "fake_any", "fake_any"]
    assert not compiled.plan.resolutions[0].fallback
    assert "does not support 'linear_attention'" in " ".join(
        reason for _, rs in compiled.plan.resolutions[1].rejected for reason in rs)


def test_kernel_preference_that_cannot_run_fails_with_reason(host):
    host.register("kernels", "fake_cuda", FakeKernel, supports=("cross_attention",), devices=("cuda",))
    with pytest.raises(UnavailableError, match="fake_cuda.*cuda only, not on cpu"):
        ProgramCompiler(program(CONNS)).compile(kernel="fake_cuda")


def test_kernel_preference_supporting_nothing_fails(host):
    host.register("kernels", "only_mamba", FakeKernel, supports=("mamba",))
    with pytest.raises(CompileError, match="only_mamba.*none of"):
        ProgramCompiler(program(CONNS)).compile(kernel="only_mamba")


def test_unknown_kernel_preference(host):
    with pytest.raises(UnknownNameError, match="flexx"):
        ProgramCompiler(program(CONNS)).compile(kernel="flexx")


def test_unknown_fn_type_names_the_connection(host):
    conns = CONNS + [Connection("obs", "mem", fn="cross_atention")]
    with pytest.raises(UnknownNameError) as info:
        ProgramCompiler(program(conns)).compile()
    msg = str(info.value)
    assert "connection #4 'obs' -> 'mem'" in msg and "'cross_atention'" in msg
    assert "Did you mean 'cross_attention'" in msg


def test_unavailable_fn_type_lists_candidates(host):
    host.register("attention", "cuda_only_attn", FakeKernel, devices=("cuda",))
    host.register("kernels", "cuda_only_kernel", FakeKernel, supports=("cuda_only_attn",), devices=("cuda",),
                  requires=("no_such_module_xyz",))
    conns = [Connection("obs", "obs"), Connection("mem", "state", fn="cuda_only_attn")]
    with pytest.raises(UnavailableError) as info:
        ProgramCompiler(program(conns)).compile()
    msg = str(info.value)
    assert "connection #1 'mem' -> 'state'" in msg
    assert "cuda_only_attn" in msg and "cuda_only_kernel" in msg
    assert "no_such_module_xyz" in msg


def test_eliminated_connections_are_not_resolved(host):
    # the unknown type sits on a connection into an exported region: dead elimination drops it
    conns = CONNS + [Connection("obs", "mem", fn="no_such_type")]
    compiled = ProgramCompiler(program(conns, {"mem": "export"})).compile()
    assert [r.requested for r in compiled.plan.resolutions.values()] == ["cross_attention", "linear_attention"]


def test_resolve_false_skips_the_pass(host):
    conns = [Connection("obs", "obs", fn="no_such_type")]
    compiled = ProgramCompiler(program(conns)).compile(resolve=False)
    assert compiled.plan is not None and compiled.plan.resolutions == {}


def test_head_dim_reaches_capability_checks(host):
    seen = []
    host.register("kernels", "hd_kernel", FakeKernel, supports=("cross_attention",), priority=5,
                  check=lambda ctx: seen.append(ctx.head_dim) or (["head_dim must be 64"] if ctx.head_dim != 64 else []))
    compiled = ProgramCompiler(program(CONNS)).compile(n_heads=4)
    assert 4 in seen  # d_model 16 / 4 heads
    assert dict(compiled.plan.resolutions[0].rejected)["hd_kernel"] == ["head_dim must be 64"]


def test_report_and_dict(host):
    host.register("kernels", "fake_cuda", FakeKernel, supports=("cross_attention",), devices=("cuda",), priority=50)
    compiled = ProgramCompiler(program(CONNS, {"mem": "freeze"})).compile()
    text = str(compiled)
    assert text == compiled.report()
    for header in ("connection", "requested", "implementation", "kernel", "provider", "rejected"):
        assert header in text
    for i, c in enumerate(CONNS):
        assert f"#{i} {c.src} -> {c.dst}" in text
    assert "linear_attention" in text and "module" in text
    # region table: positions from the layout, frozen mode shown
    line = next(ln for ln in text.splitlines() if ln.startswith("mem "))
    assert "frozen" in line and str(compiled.schema.layout.region_numel("mem")) in line
    # plan summary lists the resolutions too
    assert "connection #0" in compiled.plan.summary()
    from canvas_core.compiler.report import format_plan_report

    assert "fake_cuda" in format_plan_report(compiled.plan)
    d = json.loads(json.dumps(compiled.to_dict()))
    assert d["frozen_regions"] == ["mem"] and d["device"] == "cpu"
    res0 = d["connections"][0]["resolution"]
    assert res0["requested"] == "cross_attention" and res0["kernel"] == "reference"
    assert {"candidate": "fake_cuda", "reasons": ["runs on cuda only, not on cpu"]} in res0["rejected"]
    assert d["schema_hash"] == compiled.schema.schema_hash()


def test_cuda_target_without_cuda_rejects_cuda_kernels(host):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this checks the CPU-only machine's report")
    host.register("kernels", "fake_cuda", FakeKernel, supports=("cross_attention",), devices=("cuda",), priority=50)
    compiled = ProgramCompiler(program(CONNS)).compile(device="cuda")
    r = compiled.plan.resolutions[0]
    assert r.kernel == "reference" and r.device == "cuda"
    assert dict(r.rejected)["fake_cuda"] == ["needs CUDA but torch reports no CUDA device"]


def test_installed_xformers_backend_is_rejected_with_reason():
    """With the real installed plugins: xformers (not installed here, CUDA only) is rejected."""
    pytest.importorskip("canvas_backend_xformers")
    import importlib.util

    if importlib.util.find_spec("xformers") is not None:
        pytest.skip("xformers is installed here")
    with use_host(PluginHost(autoload=True)):
        compiled = ProgramCompiler(program(CONNS)).compile()
    rejected = dict(compiled.plan.resolutions[0].rejected)
    assert "xformers" in rejected
    assert any("'xformers'" in r and "not installed" in r for r in rejected["xformers"])
    assert compiled.plan.resolutions[0].kernel == "reference"


def test_failed_resolution_leaves_the_module_untouched(host, tmp_path):
    from torch import nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.regions = nn.ModuleDict({n: nn.Linear(2, 2) for n in REGIONS})

    model = Model()
    conns = [Connection("obs", "state", fn="no_such_type")]
    with pytest.raises(UnknownNameError, match="connection #0 'obs' -> 'state'"):
        ProgramCompiler(program(conns, {"obs": "freeze", "mem": "export"})).compile(module=model, export_dir=tmp_path)
    assert all(p.requires_grad for p in model.parameters())
    assert list(tmp_path.iterdir()) == []
