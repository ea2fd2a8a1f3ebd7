"""The guards on canvas attention accept wrappers of it and catch a replaced attention module.

* Wrapping a block's attention module for activation checkpointing (``checkpoint_wrapper``) or
  with ``torch.compile`` keeps running the canvas attention (and its ``beta``); the sharpening
  guard and the installed-topology guard used to refuse such a model as if the attention had
  been replaced.  Now the wrapper is accepted (and remembered), and the output is unchanged.
* Replacing a diffusers ``Attention`` module by a copy holding another processor dropped
  sharpening silently (only the processor slot of the old module was watched); now refused.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from canvas_core.errors import BackboneError
from canvas_core.looping import SharpeningSchedule, get_adapter, graft_looped_blocks
from canvas_core.schema import CanvasTopology, Connection
from canvas_core.testing import one_thread_fixture

from tests.looping._backbone_setup import inputs, make, run

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")
_one_thread = one_thread_fixture()


def _sharp():
    return SharpeningSchedule(max_loops=2, beta_min=3.0, beta_max=3.0, schedule="constant")


def _grafted(kind, sharpening=True):
    m, kw = make(kind), inputs(kind)
    graft_looped_blocks(m, max_loops=2, freeze="full", scope="block", sharpening=_sharp() if sharpening else None)
    with torch.no_grad():
        out = run(kind, m, kw)
    return m, kw, out


def _wrap(module, how):
    return checkpoint_wrapper(module) if how == "checkpoint" else torch.compile(module, backend="eager")


def _inner(wrapper):
    """(parent, name) of the wrapped module inside a wrapper made by :func:`_wrap`."""
    for parent in wrapper.modules():
        for name in ("_checkpoint_wrapped_module", "_orig_mod"):
            if name in parent._modules:
                return parent, name
    raise AssertionError("no wrapped module")


@pytest.mark.parametrize("how", ["checkpoint", "compile"])
def test_wrapped_sharpened_attention_runs_sharpened(how):
    m, kw, sharp = _grafted("vit")
    _, _, plain = _grafted("vit", sharpening=False)
    assert not torch.allclose(sharp, plain, atol=1e-5)  # sharpening shows in the output
    for b in m.blocks:
        b.original.attn = _wrap(b.original.attn, how)
    with torch.no_grad():
        assert torch.allclose(run("vit", m, kw), sharp, atol=1e-5)
        assert torch.allclose(run("vit", m, kw), sharp, atol=1e-5)  # the accepted wrapper again
    # the attention inside the accepted wrapper is still watched: a copy there is refused
    parent, name = _inner(m.blocks[1].original.attn)
    parent._modules[name] = copy.deepcopy(parent._modules[name])
    with torch.no_grad(), pytest.raises(BackboneError, match=r"sharpening.*'vit'.*block 1 "):
        run("vit", m, kw)


def test_wrapped_diffusers_attention_runs_sharpened():
    m, kw, sharp = _grafted("cogvideox")
    for b in m.transformer_blocks:
        b.original.attn1 = checkpoint_wrapper(b.original.attn1)
    with torch.no_grad():
        assert torch.allclose(run("cogvideox", m, kw), sharp, atol=1e-5)


def test_replaced_diffusers_attention_module_is_refused():
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

    m, kw, _ = _grafted("cogvideox")
    b = m.transformer_blocks[1]
    a = copy.deepcopy(b.original.attn1)
    a.set_processor(CogVideoXAttnProcessor2_0())
    b.original.attn1 = a
    with torch.no_grad(), pytest.raises(BackboneError, match=r"sharpening.*'cogvideox'.*block 1 \(Attention\)") as e:
        run("cogvideox", m, kw)
    assert "block 0" not in str(e.value)


def test_replaced_attention_module_without_sharpening_runs():
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

    m, kw, plain = _grafted("cogvideox", sharpening=False)
    for b in m.transformer_blocks:
        a = copy.deepcopy(b.original.attn1)
        a.set_processor(CogVideoXAttnProcessor2_0())
        b.original.attn1 = a
    with torch.no_grad():
        assert torch.allclose(run("cogvideox", m, kw), plain, atol=1e-5)


def test_installed_topology_accepts_checkpoint_wrapped_attention():
    m, kw = make("vit"), inputs("vit")
    graft_looped_blocks(m, max_loops=2, freeze="full")
    ad = get_adapter(m)
    ad.install_topology(m, CanvasTopology(connections=[Connection("patches", "patches"), Connection("cls", "cls")]),
                        ad.token_layout(m, kw))
    with torch.no_grad():
        ref = run("vit", m, kw)
        for b in m.blocks:
            b.original.attn = checkpoint_wrapper(b.original.attn)
        assert torch.allclose(run("vit", m, kw), ref, atol=1e-5)


def test_installed_topology_refuses_a_replaced_diffusers_attention_module():
    """The module holding the canvas processor is watched in its parent too: a re-processed copy
    put in its place (the old one still holds the canvas processor) is refused, then removable."""
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

    m, kw = make("cogvideox"), inputs("cogvideox")
    graft_looped_blocks(m, max_loops=2, freeze="full")
    ad = get_adapter(m)
    ad.install_topology(m, CanvasTopology(connections=[Connection("video", "video", t_src=0, t_dst=0),
                                                       Connection("text", "text")]), ad.token_layout(m, kw))
    b = m.transformer_blocks[0]
    a = copy.deepcopy(b.original.attn1)
    a.set_processor(CogVideoXAttnProcessor2_0())
    b.original.attn1 = a
    with torch.no_grad(), pytest.raises(BackboneError, match=r"block 0 \(Attention\)") as e:
        run("cogvideox", m, kw)
    assert "block 1" not in str(e.value)
    ad.remove_topology(m)
    with torch.no_grad():
        run("cogvideox", m, kw)  # removed: runs again
