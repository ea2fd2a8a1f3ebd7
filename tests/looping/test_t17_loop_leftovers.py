"""Three leftovers of "replaced canvas processors are refused" and "compile_blocks compiles one graph".

* Sharpening without a topology: ``set_attn_processor`` / ``fuse_qkv_projections`` on a grafted
  model with a sharpening schedule put processors that ignore ``beta`` in place of the canvas
  ones; the schedule silently stopped acting (the output was the unsharpened model's). Now the
  next call is refused with ``BackboneError`` naming the blocks and the fix (by the model's input
  guard, identity tests only); without sharpening the model runs as before.
* ``adapter.prepare(model)`` while a topology is installed (also ``graft_looped_blocks`` after
  ``install_topology``) reset the input guards to the no-topology ones: a call on another patch
  grid with as many tokens ran the topology over the wrong positions with no error. The
  installed topology's guard is kept now.
* Span members read their ``block_idx`` in the ordering check of every call, so
  ``compile_blocks`` compiled the member's code once per member (and ``fullgraph=True`` failed
  past the recompile limit of 8). The check now compares identities; the index is read only in
  the refusal.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounter

import canvas_core
from canvas_core.errors import BackboneError, ShapeError
from canvas_core.looping import SharpeningSchedule, find_adapter, get_adapter, graft_looped_blocks
from canvas_core.schema import CanvasTopology, Connection
from canvas_core.testing import one_thread_fixture

from tests.looping._backbone_setup import inputs, make, run
from tests.looping._scope_setup import Block

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")
_one_thread = one_thread_fixture()

LOCAL = CanvasTopology(connections=[Connection("video", "video", t_src=0, t_dst=0), Connection("text", "text")])


def _sharp():
    """beta 3 at every loop: loop 0, which the output depends on at initialisation, is sharpened."""
    return SharpeningSchedule(max_loops=2, beta_min=3.0, beta_max=3.0, schedule="constant")


def _grafted(scope="block", sharpening=True):
    m, kw = make("cogvideox"), inputs("cogvideox")
    graft_looped_blocks(m, max_loops=2, freeze="full", scope=scope, sharpening=_sharp() if sharpening else None)
    with torch.no_grad():
        out = run("cogvideox", m, kw)
    return m, kw, get_adapter(m), out


def _replace(m, how):
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

    if how == "fuse":
        m.fuse_qkv_projections()
    else:
        m.set_attn_processor(CogVideoXAttnProcessor2_0())


def _parts(m):
    return [b for b in m.transformer_blocks if hasattr(b, "set_sharpening")]


# --- 1. sharpening without a topology --------------------------------------------------------------
@pytest.mark.parametrize("scope", ["block", (0, 2)])
@pytest.mark.parametrize("how", ["fuse", "set_attn_processor"])
def test_sharpened_call_after_processors_replaced_is_refused(how, scope):
    m, kw, _, _ = _grafted(scope)
    _replace(m, how)
    with torch.no_grad(), pytest.raises(BackboneError, match=r"sharpening.*'cogvideox'.*block 0 .*block 1 ") as e:
        m(**kw)
    assert "adapter.prepare(model)" in str(e.value) and "set_sharpening(None)" in str(e.value)


def test_sharpening_acts_again_once_the_canvas_processors_are_back():
    m, kw, ad, sharp = _grafted()
    unsharp = _grafted(sharpening=False)[3]
    assert not torch.allclose(sharp, unsharp)  # the schedule changes the output
    _replace(m, "fuse")
    m.unfuse_qkv_projections()  # the canvas processors diffusers kept
    with torch.no_grad():
        assert torch.equal(run("cogvideox", m, kw), sharp)
    _replace(m, "set_attn_processor")
    ad.prepare(m)  # wraps the new processors in canvas attention: recorded again
    with torch.no_grad():
        assert torch.equal(run("cogvideox", m, kw), sharp)
    _replace(m, "set_attn_processor")
    for p in _parts(m):
        p.set_sharpening(None)  # nothing to act on: the call runs, unsharpened
    with torch.no_grad():
        torch.testing.assert_close(run("cogvideox", m, kw), unsharp)


def test_without_sharpening_replaced_processors_still_run():
    m, kw, _, plain = _grafted(sharpening=False)
    _replace(m, "set_attn_processor")
    with torch.no_grad():
        torch.testing.assert_close(run("cogvideox", m, kw), plain)


def test_sharpened_one_block_replaced_names_that_block_and_a_copy_checks_its_own():
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

    m, kw, _, sharp = _grafted()
    m2 = copy.deepcopy(m)
    m.transformer_blocks[1].original.attn1.processor = CogVideoXAttnProcessor2_0()
    with torch.no_grad():
        with pytest.raises(BackboneError, match=r"in block 1 \(CogVideoXAttnProcessor2_0\) \(e\.g\."):
            m(**kw)
        assert torch.equal(run("cogvideox", m2, kw), sharp)


def test_sharpened_call_after_topology_removed_from_replaced_processors_is_refused():
    m, kw, ad, _ = _grafted()
    ad.install_topology(m, LOCAL, ad.token_layout(m, kw))
    _replace(m, "fuse")
    ad.remove_topology(m)  # the topology is gone, the replaced processors still ignore beta
    with torch.no_grad(), pytest.raises(BackboneError, match="sharpening"):
        m(**kw)
    m.unfuse_qkv_projections()
    with torch.no_grad():
        m(**kw)


# --- 2. prepare while a topology is installed -----------------------------------------------------
def _other_grid(kw):
    """``kw`` on a 8 x 2 patch grid instead of 4 x 4: as many tokens, other positions."""
    x = kw["hidden_states"]
    return dict(kw, hidden_states=x.reshape(*x.shape[:3], 16, 4).contiguous())


@pytest.mark.parametrize("order", ["prepare_again", "graft_after_install"])
def test_prepare_keeps_the_installed_topology_shape_guard(order):
    m, kw = make("cogvideox"), inputs("cogvideox")
    ad = find_adapter(m)
    if order == "graft_after_install":
        ad.prepare(m)
        ad.install_topology(m, LOCAL, ad.token_layout(m, kw))
        graft_looped_blocks(m, max_loops=2, freeze="full")
    else:
        graft_looped_blocks(m, max_loops=2, freeze="full")
        ad.install_topology(m, LOCAL, ad.token_layout(m, kw))
        ad.prepare(m)
    with torch.no_grad():
        run("cogvideox", m, kw)
        with pytest.raises(ShapeError, match="patch rows: installed 4, given 8"):
            m(**_other_grid(kw))
    ad.remove_topology(m)
    with torch.no_grad():
        m(**_other_grid(kw))  # no topology: any grid runs


# --- 3. span members compile once -------------------------------------------------------------------
class Stack(nn.Module):
    """``(B, N, 3) -> (B, N, 3)``; ``order``: the blocks to run, in order."""

    def __init__(self, depth):
        super().__init__()
        self.embed_dim = 12
        self.patch_embed = nn.Linear(3, 12)
        self.blocks = nn.ModuleList([Block(12) for _ in range(depth)])
        self.proj_out = nn.Linear(12, 3)

    def forward(self, x, order=None):
        h = self.patch_embed(x)
        for i in range(len(self.blocks)) if order is None else order:
            h = self.blocks[i](h)
        return self.proj_out(h)


def _span_net(members):
    """A span of ``members + 1`` blocks (its first block and the members) and one block after it."""
    torch.manual_seed(0)
    net = Stack(members + 2).eval()
    graft_looped_blocks(net, max_loops=2, freeze="full", scope=(0, members + 1))
    canvas_core.set_loops(net, 2)
    return net


@pytest.fixture
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _frames_compiled(members):
    """(graphs, dynamo frames) ``compile_blocks(fullgraph=True)`` compiles for two calls, after
    checking the compiled output against the eager one."""
    from torch._dynamo.utils import get_compilation_metrics

    torch._dynamo.reset()
    net, x = _span_net(members), torch.randn(2, 5, 3)
    with torch.no_grad():
        ref = net(x)
    cnt, before = CompileCounter(), len(get_compilation_metrics())
    canvas_core.compile_blocks(net, backend=cnt, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref)
        net(x)
    return cnt.frame_count, len(get_compilation_metrics()) - before


@pytest.mark.usefixtures("_fresh_dynamo")
def test_compile_blocks_span_graphs_do_not_grow_with_the_members():
    two, four = _frames_compiled(2), _frames_compiled(4)
    assert two == four  # (graphs with ops, frames compiled)


@pytest.mark.usefixtures("_fresh_dynamo")
def test_compile_blocks_fullgraph_on_a_span_with_more_members_than_the_recompile_limit():
    net, x = _span_net(members=9), torch.randn(2, 5, 3)
    with torch.no_grad():
        ref = net(x)
    canvas_core.compile_blocks(net, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref)


@pytest.mark.usefixtures("_fresh_dynamo")
def test_compiled_span_members_still_refuse_a_forward_that_skips_the_span():
    net, x = _span_net(members=3), torch.randn(2, 5, 3)
    canvas_core.compile_blocks(net, backend="eager")
    with torch.no_grad():
        net(x)
        net(x)
        with pytest.raises(BackboneError, match=r"block 2 .*span \(0, 4\)"):
            net(x, order=[0, 2, 3, 4])  # the span ran, then block 2 while block 1 comes next
        with pytest.raises(BackboneError, match=r"block 3 .*span \(0, 4\)"):
            net(x, order=[3, 4])  # entered inside the span
        net(x, order=[0, 1, 2, 3, 4])
