"""Sizes that cannot fit are refused with a SizeLimitError before anything is allocated.

Each case would allocate terabytes (or loop for hours) if it were not refused; the test runs
in-process, so a refusal that came too late would show as a MemoryError or a hang here. The
limits are environment variables (docs/limits.md); lowering one makes a small size refused too.
"""

from __future__ import annotations

import pytest

import canvas_core as cc
from canvas_core.errors import CanvasError, SizeLimitError
from canvas_core.schema.limits import LIMITS, check_elements, limit, size_limits


def _small_layout(**kw):
    base = dict(T=2, H=2, W=2, d_model=8, regions={"a": (0, 1, 0, 2, 0, 2), "b": (1, 2, 0, 2, 0, 2)})
    base.update(kw)
    return cc.CanvasLayout(**base)


def _canvas_create_empty_huge():
    cc.SpatiotemporalCanvas(_small_layout()).create_empty(10**12)


def _wrapper_loops():
    from torch import nn

    cc.LoopedBlockWrapper(nn.Identity(), 0, 10**6, 8)


def _graft_loops():
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer_blocks = nn.ModuleList([nn.Linear(4, 4)])

    cc.graft_looped_blocks(Tiny(), max_loops=10**6)


def _builtin_type_direct():
    from canvas_core.extend import AttentionBase

    class Mine(AttentionBase):  # built directly, not through the registry
        type_name = "mine"

    Mine(10**9, 1)


CASES = {
    "layout T=10**12": (lambda: cc.CanvasLayout(T=10**12, H=1, W=1, d_model=8), "positions", "10**12"),
    "layout H*W huge": (lambda: cc.CanvasLayout(T=1, H=10**5, W=10**5, d_model=8), "positions", "CANVAS_MAX_POSITIONS"),
    "layout d_model=10**9": (lambda: cc.CanvasLayout(T=2, H=1, W=1, d_model=10**9), "width", "d_model"),
    "create_empty(10**12)": (_canvas_create_empty_huge, "batch", "batch_size"),
    "CanvasAttention d_model=10**9": (
        lambda: cc.CanvasAttention(cc.CanvasTopology([cc.Connection("a", "b")]), _small_layout(), d_model=10**9,
                                   n_heads=1), "width", "d_model"),
    "LoopedBlockWrapper max_loops=10**6": (_wrapper_loops, "loops", "max_loops"),
    "create_attention('mamba', d_model=10**9)": (lambda: cc.create_attention("mamba", d_model=10**9, n_heads=1),
                                                 "width", "'mamba'"),
    "create_attention('perceiver', d_model=10**9)": (
        lambda: cc.create_attention("perceiver", d_model=10**9, n_heads=1), "width", "'perceiver'"),
    "AttentionBase subclass d_model=10**9": (lambda: _builtin_type_direct(), "width", "d_model"),
    "graft_looped_blocks max_loops=10**6": (_graft_loops, "loops", "max_loops"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_refused_before_allocating(name):
    make, which, word = CASES[name]
    with pytest.raises(SizeLimitError) as info:
        make()
    msg = str(info.value)
    var = LIMITS[which][0]
    assert var in msg and f"{limit(which):,}" in msg, msg  # the limit and how to raise it
    assert word.replace("10**12", "1,000,000,000,000") in msg or word in msg, msg
    assert isinstance(info.value, CanvasError) and isinstance(info.value, ValueError)


def test_schema_file_with_a_huge_canvas_is_refused_naming_the_size():
    text = '{"layout": {"T": 1000000000000, "H": 1, "W": 1, "d_model": 4}, "regions": {}}'
    with pytest.raises(CanvasError, match="CANVAS_MAX_POSITIONS"):
        cc.CanvasSchema.from_json(text)


def test_limits_are_settable_through_the_environment(monkeypatch):
    monkeypatch.setenv("CANVAS_MAX_POSITIONS", "7")
    with pytest.raises(SizeLimitError, match="limit 7 "):
        _small_layout()
    monkeypatch.setenv("CANVAS_MAX_POSITIONS", "8")
    _small_layout()  # exactly at the limit is allowed
    monkeypatch.setenv("CANVAS_MAX_BATCH", "3")
    canvas = cc.SpatiotemporalCanvas(_small_layout())
    assert canvas.create_empty(3).shape == (3, 8, 8)
    with pytest.raises(SizeLimitError, match="CANVAS_MAX_BATCH"):
        canvas.create_empty(4)
    monkeypatch.setenv("CANVAS_MAX_ELEMENTS", "100")
    with pytest.raises(SizeLimitError, match=r"\(3, 8, 8\) = 192 elements"):
        canvas.create_empty(3)
    assert size_limits()["elements"] == 100 and size_limits()["batch"] == 3


@pytest.mark.parametrize("raw", ["zero", "0", "-5", "1.5"])
def test_a_malformed_limit_variable_is_named(monkeypatch, raw):
    monkeypatch.setenv("CANVAS_MAX_WIDTH", raw)
    with pytest.raises(SizeLimitError, match="CANVAS_MAX_WIDTH"):
        _small_layout()


def test_check_elements_names_shape_and_bytes(monkeypatch):
    monkeypatch.setenv("CANVAS_MAX_ELEMENTS", "10")
    with pytest.raises(SizeLimitError, match=r"my tensor would be a tensor of shape \(4, 4\) = 16 elements \(~64 B\)"):
        check_elements((4, 4), "my tensor")
    check_elements((2, 5), "fits")


def test_demo_loops_refused_before_work(tmp_path):
    from canvas_core.cli import main

    assert main(["demo", "--loops", "1000000", "--quick", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def _dense_topology():
    layout = cc.CanvasLayout(T=2, H=4, W=4, d_model=8, regions={"a": (0, 1, 0, 4, 0, 4), "b": (1, 2, 0, 4, 0, 4)})
    topo = cc.CanvasTopology([cc.Connection("a", "b"), cc.Connection("b", "a"), cc.Connection("a", "a")])
    return layout, topo


def test_n_by_n_tensors_respect_the_element_limit(monkeypatch):
    import torch

    layout, topo = _dense_topology()
    monkeypatch.setenv("CANVAS_MAX_ELEMENTS", "1000")  # N = 32: an N x N mask has 1024 elements
    with pytest.raises(SizeLimitError, match=r"\(32, 32\)"):
        topo.to_attention_mask(layout)
    with pytest.raises(SizeLimitError, match="kernel='segments' or 'sparse'"):
        cc.CanvasAttention(topo, layout, n_heads=1, kernel="dense")
    torch.manual_seed(0)
    auto = cc.CanvasAttention(topo, layout, n_heads=1)  # auto mode avoids the N x N mask
    modes = {k.mode for k in auto.modules() if hasattr(k, "mode")}
    assert "dense" not in modes
    monkeypatch.delenv("CANVAS_MAX_ELEMENTS")
    torch.manual_seed(0)
    dense = cc.CanvasAttention(topo, layout, n_heads=1, kernel="dense")
    x = torch.randn(2, 32, 8)
    torch.testing.assert_close(auto(x), dense(x))


@pytest.mark.parametrize("exc", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried ..."),
    MemoryError(),
])
def test_allocator_failure_becomes_a_size_error_naming_the_shape(exc):
    from canvas_core.runtime.input_checks import allocating

    with pytest.raises(SizeLimitError, match=r"create_empty\(9\): .*shape \(9, 4, 2\) \(72 elements"):
        with allocating("create_empty(9)", (9, 4, 2)):
            raise exc


def test_other_errors_and_device_oom_pass_through():
    from canvas_core.runtime.input_checks import allocating

    class OutOfMemoryError(RuntimeError):  # torch.OutOfMemoryError's name: callers catch it by type
        pass

    for exc in (RuntimeError("shape mismatch"), OutOfMemoryError("CUDA out of memory")):
        with pytest.raises(type(exc)):
            with allocating("x", (1,)):
                raise exc


def test_a_malformed_limit_variable_is_not_blamed_on_the_schema(monkeypatch):
    layout = cc.CanvasLayout(T=1, spatial_shape=(2,), d_model=4, regions={"a": (0, 1, 0, 2)})
    text = cc.CanvasSchema(layout=layout, topology=cc.CanvasTopology(connections=[])).to_json()
    monkeypatch.setenv("CANVAS_MAX_POSITIONS", "abc")
    with pytest.raises(SizeLimitError, match="CANVAS_MAX_POSITIONS='abc' must be a positive integer") as err:
        cc.CanvasSchema.from_json(text)
    assert "invalid schema" not in str(err.value)
