"""graft_looped_blocks checks gate_init_bias against the dtype the gates live in, is atomic (a step
failing after the adapter's prepare leaves the model exactly as it was), and grafts / ungrafts
through torch.compile / DataParallel handles (DistributedDataParallel refused)."""

from __future__ import annotations

import fractions

import numpy as np
import pytest
import torch
from torch import nn

import canvas_core as cc
from canvas_core.errors import BackboneError, CanvasError
from canvas_core.looping import get_adapter
from canvas_core.looping import graft as graft_mod
from canvas_core.looping.scopes import scope_of, set_loops

from tests.looping._backbone_setup import inputs, make, run

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")


def _fingerprint(model: nn.Module):
    """Everything a graft may change: per module its class, attribute objects (processor,
    forward, beta ...), submodules, hooks; every tensor bitwise; every requires_grad."""
    mods = {}
    for name, m in model.named_modules():
        attrs = {k: id(v) for k, v in m.__dict__.items()
                 if k not in ("_parameters", "_buffers", "_modules")}
        hooks = {k: tuple((kk, id(vv)) for kk, vv in v.items()) for k, v in m.__dict__.items()
                 if k.endswith("hooks") and isinstance(v, dict)}
        mods[name] = (type(m), attrs, hooks, tuple((k, id(v)) for k, v in m._modules.items()),
                      id(getattr(m, "processor", None)))
    sd = {k: (v.dtype, v.shape, v.clone()) for k, v in model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    return mods, sd, grads


def _assert_same(model, fp):
    mods, sd, grads = _fingerprint(model)
    assert mods == fp[0]
    assert sd.keys() == fp[1].keys()
    for k, (dt, shape, t) in fp[1].items():
        assert sd[k][0] == dt and sd[k][1] == shape and torch.equal(sd[k][2], t), k
    assert grads == fp[2]


# --- 1a: gate_init_bias must fit the gates' dtype -----------------------------------------------
@pytest.mark.parametrize("kind", ["vit", "cogvideox"])
@pytest.mark.parametrize("scope", ["block", "stack"])
@pytest.mark.parametrize("bias", [1e39, -1e39, 10 ** 400, np.float64(4e38), fractions.Fraction(10 ** 400)],
                         ids=["1e39", "-1e39", "int1e400", "np4e38", "fraction1e400"])
def test_gate_init_bias_beyond_float32_refused_model_untouched(kind, scope, bias):
    m = make(kind)
    fp = _fingerprint(m)
    with pytest.raises(BackboneError, match="gate_init_bias.*float32"):
        cc.graft_looped_blocks(m, max_loops=3, scope=scope, gate_init_bias=bias)
    _assert_same(m, fp)
    cc.graft_looped_blocks(m, max_loops=3, scope=scope)  # and it grafts normally afterwards
    cc.ungraft_looped_blocks(m)
    _assert_same(m, fp)


def test_gate_init_bias_largest_float32_accepted():
    m = make("vit")
    big = float(torch.finfo(torch.float32).max)
    (w, *_), _ = cc.graft_looped_blocks(m, max_loops=3, gate_init_bias=big)
    assert torch.isfinite(w.loop_gate).all() and float(w.loop_gate[0].detach()) == big


def test_gate_init_bias_beyond_float16_model_refused():
    m = make("vit", dtype=torch.float16)
    fp = _fingerprint(m)
    with pytest.raises(BackboneError, match="gate_init_bias.*float16"):
        cc.graft_looped_blocks(m, max_loops=3, gate_init_bias=1e6)
    _assert_same(m, fp)


# --- 1b: atomic graft -----------------------------------------------------------------------------
class _Boom(RuntimeError):
    pass


def _fail_second_block(monkeypatch):
    real = graft_mod.LoopedBlockWrapper

    def build(block, block_idx, **kw):
        if block_idx == 1:
            raise _Boom("block 1")
        return real(block, block_idx=block_idx, **kw)

    monkeypatch.setattr(graft_mod, "LoopedBlockWrapper", build)


def _fail_at(monkeypatch, name):
    def boom(*a, **k):
        raise _Boom(name)

    monkeypatch.setattr(graft_mod, name, boom)


_STEPS = [("second_block", "block", "full"), ("freeze_full", "block", "full"),
          ("freeze_half", "stack", "half"), ("_make_action_head", "block", "none"),
          ("_make_action_head", "stack", "full")]


@pytest.mark.parametrize("kind,where,scope,freeze",
                         [(k, *s) for k in ("vit", "cogvideox") for s in _STEPS]
                         + [("cogvideox", "_make_action_head", "model", "full")])  # latent -> latent
def test_failed_graft_leaves_model_exactly_as_before(monkeypatch, kind, where, scope, freeze):
    m = make(kind)
    kw = inputs(kind)
    with torch.no_grad():
        ref = run(kind, m, kw)
    fp = _fingerprint(m)
    if where == "second_block":
        _fail_second_block(monkeypatch)
    else:
        _fail_at(monkeypatch, where)
    with pytest.raises(_Boom):
        cc.graft_looped_blocks(m, max_loops=3, scope=scope, freeze=freeze)
    _assert_same(m, fp)
    assert not any("Canvas" in type(x).__name__ for x in m.modules())
    assert not any("Canvas" in type(getattr(x, "processor", None)).__name__ for x in m.modules())
    with pytest.raises(BackboneError, match="not grafted"):
        cc.ungraft_looped_blocks(m)
    with torch.no_grad():
        assert torch.equal(run(kind, m, kw), ref)
    monkeypatch.undo()
    cc.graft_looped_blocks(m, max_loops=3, scope=scope, freeze=freeze)  # grafts cleanly again
    cc.ungraft_looped_blocks(m)


def test_failed_graft_keeps_existing_hooks_and_grads(monkeypatch):
    m = make("vit")
    h = m.blocks[0].register_forward_hook(lambda *a: None)
    m.patch_embed.proj.weight.requires_grad_(False)
    fp = _fingerprint(m)
    _fail_at(monkeypatch, "freeze_full")
    with pytest.raises(_Boom):
        cc.graft_looped_blocks(m, max_loops=2)
    _assert_same(m, fp)
    assert h.id in m.blocks[0]._forward_hooks
    assert not m.patch_embed.proj.weight.requires_grad


# --- 2: wrappers ------------------------------------------------------------------------------
class _FreezingWrapper(nn.Module):
    """A user wrapper_class that freezes its block and hooks it when built."""

    def __init__(self, block, idx, max_loops, dim):
        super().__init__()
        self.original = block
        block.requires_grad_(False)
        self.hook = block.register_forward_hook(lambda mod, a, out: out)

    def forward(self, x, *a, **k):
        return self.original(x, *a, **k)

    def set_loops(self, n):
        return n


@pytest.mark.parametrize("fail_in_wrapper", [False, True])
def test_failed_graft_undoes_what_wrapper_constructors_did(monkeypatch, fail_in_wrapper):
    m = make("vit")
    fp = _fingerprint(m)
    if fail_in_wrapper:  # the second wrapper's constructor fails after the first changed its block
        class Failing(_FreezingWrapper):
            def __init__(self, block, idx, *rest):
                super().__init__(block, idx, *rest)
                if idx == 1:
                    raise _Boom("second wrapper")
        wrapper = Failing
    else:
        wrapper = _FreezingWrapper
        _fail_at(monkeypatch, "_make_action_head")
    with pytest.raises(_Boom):
        cc.graft_looped_blocks(m, max_loops=2, wrapper_class=wrapper, freeze="none")
    _assert_same(m, fp)
    assert all(p.requires_grad for p in m.parameters()) and not m.blocks[0]._forward_hooks


def test_graft_and_ungraft_through_data_parallel():
    m = make("vit")
    kw = inputs("vit")
    with torch.no_grad():
        ref = run("vit", m, kw)
    fp = _fingerprint(m)
    dp = nn.DataParallel(m)
    blocks, head = cc.graft_looped_blocks(dp, max_loops=2)
    assert all(m.blocks[i] is b for i, b in enumerate(blocks))
    assert get_adapter(dp) is get_adapter(m)
    assert scope_of(dp) == "block" and set_loops(dp, 1) == 1
    cc.freeze_half(dp)
    with torch.no_grad():
        assert torch.equal(dp(kw["x"]), ref)  # gate 0: the backbone's output
    with pytest.raises(BackboneError, match="already grafted"):
        cc.graft_looped_blocks(dp, max_loops=2)
    removed = cc.ungraft_looped_blocks(nn.DataParallel(dp))  # nested wrappers too
    assert removed == blocks
    _assert_same(m, fp)
    with pytest.raises(BackboneError, match="not grafted"):
        get_adapter(dp)


def test_graft_through_compile_handle_and_data_parallel():
    m = make("cogvideox")
    handle = torch.compile(nn.DataParallel(m))
    cc.graft_looped_blocks(handle, max_loops=2, scope="stack")
    assert scope_of(m) == (0, 2) and get_adapter(handle) is get_adapter(m)
    cc.ungraft_looped_blocks(nn.DataParallel(handle))
    assert not cc.looping.loop_parts_of(m)


def test_distributed_data_parallel_refused(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method="file://" + str(tmp_path / "pg"), rank=0, world_size=1)
    try:
        m = make("vit")
        fp = _fingerprint(m)
        ddp = DDP(m)
        for wrapped in (ddp, torch.compile(ddp)):
            with pytest.raises(BackboneError, match=r"DistributedDataParallel.*\.module") as e:
                cc.graft_looped_blocks(wrapped, max_loops=2)
            assert isinstance(e.value, CanvasError)
            _assert_same(m, fp)
        cc.graft_looped_blocks(ddp.module, max_loops=2)
        with pytest.raises(BackboneError, match=r"ungraft_looped_blocks.*DistributedDataParallel.*\.module"):
            cc.ungraft_looped_blocks(ddp)
        assert get_adapter(ddp) is get_adapter(m)  # read-only: looked up through the wrapper
        cc.ungraft_looped_blocks(ddp.module)
    finally:
        dist.destroy_process_group()


def test_model_scope_through_data_parallel_is_refused_untouched():
    m = make("cogvideox")
    fp = _fingerprint(m)
    with pytest.raises(BackboneError, match="scope='model'.*DataParallel"):
        cc.graft_looped_blocks(nn.DataParallel(m), max_loops=2, scope="model")
    _assert_same(m, fp)
