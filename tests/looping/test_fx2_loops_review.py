"""Review fixes of the loops: ``set_loops`` on ``wrapper_class=`` wrappers saves only each wrapper's
own attributes (not the wrapped block), ``ungraft_looped_blocks`` leaves a parameter put in place of
a recorded one with its own ``requires_grad``, and the adaptive-exit statistics are one reduction
per tensor (float64 accumulation, no host sync) while staying scale-free."""

from __future__ import annotations

import copy
import gc
import math
import pickle
import weakref
from typing import Any, List

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import canvas_core as cc
from canvas_core.looping import loop_parts_of
from canvas_core.looping.loop_engine import _rel_change, _token_rms

from tests.looping._scope_setup import make_net

torch.set_num_threads(1)


class _CountingDict(dict):
    """A dict that counts how often something copies or walks it."""

    reads = 0

    def keys(self):  # type: ignore[override]
        _CountingDict.reads += 1
        return super().keys()

    def __iter__(self):
        _CountingDict.reads += 1
        return super().__iter__()


class _Wrapper(nn.Module):
    """A ``wrapper_class=`` wrapper; refuses more loops than ``limit`` after changing itself."""

    def __init__(self, block: nn.Module, idx: int, max_loops: int, dim: int) -> None:
        super().__init__()
        self.original = block
        self.idx, self.limit, self.current_loops = idx, (1 if idx == 2 else max_loops), 1
        self.loop_emb = nn.Parameter(torch.zeros(max_loops, dim))

    def set_loops(self, n: int) -> None:
        self.asked = n
        self.register_buffer("scratch", torch.zeros(1))
        if n > self.limit:
            raise ValueError(f"block {self.idx} runs at most {self.limit} loops")
        self.current_loops = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.original(x + self.loop_emb[0])


def _grafted_wrappers() -> nn.Module:
    m = make_net()
    cc.graft_looped_blocks(m, max_loops=3, wrapper_class=_Wrapper)
    for p in loop_parts_of(m):  # state deep inside each wrapped block
        p.original.fc.__dict__["table"] = _CountingDict(a=1)
    return m


@pytest.mark.parametrize("setter", [
    lambda m: cc.set_loops(m, 1),
    lambda m: cc.CurriculumScheduler(max_loops=1, total_steps=3).step(m, 2),
])
def test_wrapper_set_loops_does_not_copy_the_wrapped_block(setter):
    m = _grafted_wrappers()
    _CountingDict.reads = 0
    setter(m)
    assert _CountingDict.reads == 0  # the whole block was snapshot (every submodule's dicts) before
    assert [p.current_loops for p in loop_parts_of(m)] == [1, 1, 1, 1]


def test_wrapper_own_changes_still_roll_back():
    m = _grafted_wrappers()
    before = [dict(p.__dict__) for p in loop_parts_of(m)]
    with pytest.raises(ValueError, match="block 2 runs at most 1"):
        cc.set_loops(m, 3)
    for p, saved in zip(loop_parts_of(m), before):
        assert p.__dict__ == saved  # current_loops, asked, the registered buffer: all put back
        assert "scratch" not in p._buffers and p.current_loops == 1


def _frozen_grafted() -> nn.Module:
    m = make_net()
    m.requires_grad_(False)  # loaded frozen, grafted for training
    cc.graft_looped_blocks(m, max_loops=2, freeze="none")
    return m


def test_replaced_parameter_keeps_its_own_requires_grad():
    m = _frozen_grafted()
    m.proj_out = nn.Linear(12, 3)  # a new, trainable head under the recorded names
    cc.ungraft_looped_blocks(m)
    assert m.proj_out.weight.requires_grad and m.proj_out.bias.requires_grad
    assert not any(p.requires_grad for n, p in m.named_parameters() if not n.startswith("proj_out"))


def test_parameter_set_with_a_flag_of_its_own_keeps_it():
    m = make_net()
    m.patch_embed.weight.requires_grad_(False)
    cc.graft_looped_blocks(m, max_loops=2, freeze="full")  # every backbone flag left False
    m.patch_embed.weight = nn.Parameter(torch.zeros(12, 3))  # set trainable on a module the graft saw
    cc.ungraft_looped_blocks(m)
    assert m.patch_embed.weight.requires_grad  # its own (True), not the recorded False
    assert all(p.requires_grad for n, p in m.named_parameters() if n != "patch_embed.weight")


def test_parameters_assigned_by_a_state_dict_load_get_their_flags_back():
    m = make_net()
    cc.graft_looped_blocks(m, max_loops=2, freeze="full")
    m.load_state_dict(copy.deepcopy(m.state_dict()), assign=True)  # new objects, frozen flags copied
    cc.ungraft_looped_blocks(m)
    assert all(p.requires_grad for p in m.parameters())


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))])
def test_copies_restore_by_name(clone):
    m = _frozen_grafted()
    twin = clone(m)
    twin.proj_out = nn.Linear(12, 3)  # the copy is not known to the side table: names decide
    cc.ungraft_looped_blocks(twin)
    assert not any(p.requires_grad for p in twin.parameters())
    cc.ungraft_looped_blocks(m)  # the original is unaffected by its copy
    assert not any(p.requires_grad for p in m.parameters())


def test_side_table_does_not_keep_models_alive():
    m = _frozen_grafted()
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None


class _Ops(TorchDispatchMode):
    """Records the ops run on tensors of ``numel`` elements, and any host sync."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.big, self.syncs = numel, [], []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if any(t.numel() == self.numel for t in tensors) and func.__name__.split(".")[0] not in (
                "view", "_unsafe_view", "detach", "alias"):
            self.big.append(func.__name__)
        if "local_scalar" in func.__name__ or "nonzero" in func.__name__:
            self.syncs.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _full_size_ops(fn: Any, *states: List[torch.Tensor]) -> "_Ops":
    mode = _Ops(states[0][0].numel())
    with mode:
        fn(*states)
    return mode


def test_exit_statistics_are_one_pass_per_tensor_without_syncs():
    p = torch.randn(4, 50, 16)
    c = p + 0.1 * torch.randn(4, 50, 16)
    rel = _full_size_ops(_rel_change, (p,), (c,))
    assert len(rel.big) <= 3 and not rel.syncs, rel.big  # c - p, ||c - p||, ||p||
    rms = _full_size_ops(_token_rms, (c,))
    assert len(rms.big) <= 1 and not rms.syncs, rms.big  # ||c||
    # same values as the direct float32 formulas on ordinary inputs
    want = ((c - p).pow(2).sum((1, 2)).sqrt() / p.pow(2).sum((1, 2)).sqrt())
    assert torch.allclose(_rel_change((p,), (c,)), want, rtol=1e-6, atol=0)
    assert torch.allclose(_token_rms((c,)), c.pow(2).mean((1, 2)).sqrt(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("scale", [1e-35, 1e-20, 1.0, 1e20, 1e35])
def test_float32_fallback_agrees_with_float64_path(scale):
    from canvas_core.looping.loop_engine import _rel_change_scaled  # devices without float64 (mps)

    torch.manual_seed(0)
    p = torch.randn(3, 5, 4) * scale
    c = p * 0.75
    p[1], c[1] = 0.0, 0.0
    p[2, 0, 0] = math.inf
    pairs = [(p.flatten(1), c.flatten(1))]
    got, ref = _rel_change((p,), (c,)), _rel_change_scaled(pairs)
    assert got.dtype == ref.dtype == torch.float32
    assert got[0].item() == pytest.approx(0.25, rel=1e-5) and ref[0].item() == pytest.approx(0.25, rel=1e-5)
    assert got[1].item() == ref[1].item() == 0.0
    assert math.isnan(got[2].item()) and math.isnan(ref[2].item())
