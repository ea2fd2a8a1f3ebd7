"""Grafted models under wrappers: DataParallel replicas of a model-scope graft run the graft on
their own weights, a span refuses to run in a replica, freezing under DistributedDataParallel is
refused, a wrapper class of the user's own is unwrapped when it declares ``canvas_wrapped_attr``
(and named in the errors when it does not), and a GenericAdapter passed in is never changed."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import canvas_core as cc
from canvas_core.errors import BackboneError, CanvasError
from canvas_core.looping import get_adapter
from canvas_core.looping.adapter import GenericAdapter
from canvas_core.runtime.compiled_names import unwrap_model, wrapper_chain

from tests.looping._scope_setup import make_net

torch.set_num_threads(1)
_replicate_mod = importlib.import_module("torch.nn.parallel.replicate")


def _replicas(model: nn.Module, n: int, monkeypatch) -> list:
    """``DataParallel``'s own ``replicate`` on the CPU: the broadcast to the devices is replaced by
    copies (what it makes on each GPU), everything else is torch's code."""
    def copies(tensors, devices, detach=False):
        return [[t.detach().clone() if detach else t.clone() for t in tensors] for _ in devices]

    monkeypatch.setattr(_replicate_mod, "_broadcast_coalesced_reshape", copies)
    return _replicate_mod.replicate(model, list(range(n)))


def _perturbed(scope, **kw):
    m = make_net()
    cc.graft_looped_blocks(m, max_loops=3, scope=scope, freeze="none", **kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return m


def test_model_scope_replica_runs_the_graft_on_its_own_weights(monkeypatch):
    m = _perturbed("model", gate_init_bias=0.5)
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        ref = m(x)
        rep = _replicas(m, 2, monkeypatch)[1]
        assert torch.equal(rep(x), ref)  # the looped forward, as the model runs it
        # the replica's own weights are used: zero its output layer and its output is zero
        rep.proj_out.weight = torch.zeros_like(rep.proj_out.weight)
        rep.proj_out.bias = torch.zeros_like(rep.proj_out.bias)
        assert rep(x).abs().max().item() == 0.0
        assert torch.equal(m(x), ref)  # the original is untouched
    cc.ungraft_looped_blocks(m)
    assert "_replicate_for_data_parallel" not in m.__dict__ and "forward" not in m.__dict__


def test_span_refuses_to_run_in_a_replica(monkeypatch):
    m = _perturbed((1, 3), gate_init_bias=0.5)
    rep = _replicas(m, 2, monkeypatch)[1]
    with pytest.raises(BackboneError, match=r"span \(1, 3\).*DataParallel replica.*scope='block'"):
        rep(torch.randn(2, 5, 3))


def test_block_scope_replica_matches_the_model(monkeypatch):
    m = _perturbed("block", gate_init_bias=0.5)
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        assert torch.equal(_replicas(m, 2, monkeypatch)[1](x), m(x))


def test_freeze_under_distributed_data_parallel_is_refused(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method="file://" + str(tmp_path / "pg"), rank=0, world_size=1)
    try:
        m = make_net()
        cc.graft_looped_blocks(m, max_loops=2, freeze="full")
        before = {n: p.requires_grad for n, p in m.named_parameters()}
        ddp = DDP(m)
        for fn in (cc.freeze_full, cc.freeze_half, cc.freeze_none):
            for wrapped in (ddp, nn.DataParallel(ddp)):
                with pytest.raises(BackboneError, match=rf"{fn.__name__}.*DistributedDataParallel.*ddp\.module"):
                    fn(wrapped)
        assert {n: p.requires_grad for n, p in m.named_parameters()} == before
        assert cc.freeze_none(ddp.module) == 0  # the plain model, before wrapping it again
    finally:
        dist.destroy_process_group()


class _Holder(nn.Module):
    """A wrapper of the user's own holding the model as ``module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class _DeclaredHolder(_Holder):
    canvas_wrapped_attr = "module"


def test_declared_wrapper_is_unwrapped():
    m = make_net()
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        ref = m(x)
    w = _DeclaredHolder(m)
    assert list(wrapper_chain(w)) == [w, m] and unwrap_model(w) is m
    blocks, _ = cc.graft_looped_blocks(w, max_loops=2, scope="model")
    assert get_adapter(w) is get_adapter(m) and cc.looping.scope_of(m) == "model"
    assert cc.freeze_half(w) > 0
    with torch.no_grad():
        assert torch.equal(w(x), ref)  # gate 0: the backbone
    assert cc.ungraft_looped_blocks(w) == blocks


def test_undeclared_wrapper_is_named_in_the_errors():
    m = make_net()
    w = _Holder(m)
    assert list(wrapper_chain(w)) == [w]  # not guessed: `module` may be a part of a model
    hint = r"_Holder is a wrapper holding your model as \.module.*canvas_wrapped_attr"
    with pytest.raises(BackboneError, match=hint):
        cc.graft_looped_blocks(w, max_loops=2)
    with pytest.raises(BackboneError, match=hint):
        cc.freeze_half(w)
    with pytest.raises(BackboneError, match="not grafted.*" + hint):
        get_adapter(w)
    with pytest.raises(BackboneError) as e:  # a model that is not a wrapper gets no such hint
        get_adapter(m)
    assert "canvas_wrapped_attr" not in str(e.value)
    cc.graft_looped_blocks(m, max_loops=2)
    with pytest.raises(BackboneError, match="not grafted.*" + hint):
        cc.ungraft_looped_blocks(w)


def test_generic_adapter_passed_in_is_not_changed():
    m = make_net()
    a = GenericAdapter()
    with pytest.raises(CanvasError, match="wrapper_class"):  # fails after inner_dim= is applied
        cc.graft_looped_blocks(m, max_loops=2, inner_dim=12, adapter=a,
                               wrapper_class=lambda b, i, n, d: object())
    assert a._hidden is None and a._attr is None
    assert not cc.looping.loop_parts_of(m)
    cc.graft_looped_blocks(m, max_loops=2, inner_dim=12, adapter=a)
    assert a._hidden is None and a._attr is None  # the graft keeps its own copy
    assert get_adapter(m)._hidden == 12 and get_adapter(m).block_attr == "blocks"
