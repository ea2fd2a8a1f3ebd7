"""The forward hooks of a grafted model (``looping/ungraft.py``) hold no reference to the model, let
a checkpoint's recompute in backward keep the forward's records, cannot be left inside a call by an
interrupted forward, and put no hook on the input embedding (a forward not run by calling the model
is told by block order, as before the hooks).

Before, a pre-hook on ``patch_embed`` held the model (a reference cycle: ``del model`` did not free
it, a deep copy of ``patch_embed`` copied the model), the recompute of a checkpointed model dropped
the records (``loop_stats`` then refused), a Ctrl-C left the call depth at 1 for good, and a second
use of the embedding read as a new forward."""

from __future__ import annotations

import copy
import gc
import pickle
import weakref

import pytest
import torch
import torch.utils.checkpoint
from torch import nn

import canvas_core as cc
from tests.looping.test_t16_loop_fixes import Tiny

torch.set_num_threads(1)


def _grafted(cls: type = Tiny, scope: object = "block") -> nn.Module:
    torch.manual_seed(0)
    m = cls()
    cc.graft_looped_blocks(m, max_loops=2, scope=scope, latent_channels=3, freeze="none")
    return m


@pytest.mark.parametrize("scope", ["block", (1, 3)])
def test_t16_loop3_grafted_model_is_freed_by_refcount(scope: object) -> None:
    m = _grafted(scope=scope)
    with torch.no_grad():
        m(torch.randn(2, 6, 3))
    ref, weight = weakref.ref(m), weakref.ref(m.patch_embed.weight)
    was = gc.isenabled()
    gc.disable()
    try:
        del m
        assert ref() is None and weight() is None
    finally:
        if was:
            gc.enable()


def test_t16_loop3_copy_of_the_input_embedding_carries_no_model() -> None:
    m = _grafted()
    pe = copy.deepcopy(m.patch_embed)
    assert not pe._forward_pre_hooks and not m.patch_embed._forward_pre_hooks
    assert len(pickle.dumps(m.patch_embed)) == len(pickle.dumps(copy.deepcopy(nn.Linear(3, 16))))


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("scope", ["block", (1, 3), "model"])
def test_t16_loop3_checkpointed_model_keeps_its_records_through_backward(scope: object, reentrant: bool) -> None:
    m = _grafted(scope=scope).train()
    x = torch.randn(2, 6, 3, requires_grad=True)
    out = torch.utils.checkpoint.checkpoint(m, x, use_reentrant=reentrant)
    before = cc.loop_stats(m)
    out.sum().backward()  # the recompute calls the model again
    after = cc.loop_stats(m)
    assert after["iterations"] == before["iterations"] == 2
    assert after.get("blocks_not_run") == before.get("blocks_not_run")
    assert cc.loop_counts(m).tolist() == [2, 2]


class Features(Tiny):
    """Offers ``features``, a forward not run by calling the model (timm's ``forward_features``)."""

    def features(self, x: torch.Tensor, last: int = 99) -> torch.Tensor:
        h = self.patch_embed(x)
        for b in self.blocks[:last]:
            h = b(h)
        return h


def test_t16_loop3_interrupted_forward_does_not_leave_the_model_inside_a_call() -> None:
    m = _grafted(Features)
    x = torch.randn(2, 6, 3)

    def interrupt(mod: nn.Module, args: object, out: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C: torch runs ``always_call`` hooks on an Exception only

    h = m.blocks[1].register_forward_hook(interrupt)
    with torch.no_grad(), pytest.raises(KeyboardInterrupt):
        m(x)
    h.remove()
    with torch.no_grad():
        m(x)  # a full call: it ends normally
        m.features(x)
        m.features(x, last=2)  # outside a call: block 0 again starts a forward
    assert cc.loop_stats(m)["blocks_not_run"] == [2, 3]


class Conditioned(Tiny):
    """``forward_features`` embeds a second input with the same embedding after block 0."""

    def forward_features(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.blocks[0](self.patch_embed(x))
        h = h + self.patch_embed(c)
        for b in self.blocks[1:]:
            h = b(h)
        return h

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.proj_out(self.forward_features(x, c))


@pytest.mark.parametrize("scope", ["block", (0, 2)])
def test_t16_loop3_second_use_of_the_embedding_is_not_a_new_forward(scope: object) -> None:
    m = _grafted(Conditioned, scope=scope)
    x, c = torch.randn(2, 6, 3), torch.randn(2, 6, 3)
    with torch.no_grad():
        m(x, c)
        m.patch_embed(c)  # outside a model call, e.g. embedding a target
        st = cc.loop_stats(m)
        assert st["iterations"] == 2 and st.get("blocks_not_run", []) == []
        m.forward_features(x, c)  # not a model call: the span is entered at its first block
        st = cc.loop_stats(m)
    assert st["iterations"] == 2 and st.get("blocks_not_run", []) == []
    assert cc.loop_counts(m).tolist() == [2, 2]
