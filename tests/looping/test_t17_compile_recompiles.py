"""Looped models under ``torch.compile`` compile a fixed number of graphs.

* ``compile_blocks`` on a grafted backbone: every looped block reuses the first block's graph
  (``runtime/regional_compile.py``), so the graph count does not grow with depth. The error name
  of the re-entry check was formatted from ``block_idx`` on every call, which dynamo guarded on:
  one graph per block, and past 8 blocks ``FailOnRecompileLimitHit`` (``fullgraph=True``) or
  blocks left eager.
* An installed topology: "a loop count compiled once is reused whenever it comes back"
  (docs/looping.md). Its runner lookup guarded on the runner cache being empty, so the second
  call of the first compiled count compiled again.

Graphs are counted with dynamo's ``CompileCounter`` backend (traced only, nothing compiled).
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import canvas_core
from canvas_core.looping import get_adapter, graft_looped_blocks
from canvas_core.schema import CanvasTopology, Connection
from canvas_core.testing import one_thread_fixture

from tests.looping._backbone_setup import COG, inputs, run
from tests.looping._scope_setup import make_net

diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")

_one_thread = one_thread_fixture()

VIDEO_TEXT = CanvasTopology(connections=[Connection("video", "video", t_src=0, t_dst=0), Connection("text", "text")])


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _cog(layers, graft=True):
    torch.manual_seed(0)
    m = diffusers.CogVideoXTransformer3DModel(**dict(COG, num_layers=layers)).eval()
    if graft:
        graft_looped_blocks(m, max_loops=2, freeze="full")
        canvas_core.set_loops(m, 2)
    return m


def _block_graphs(m, kw):
    """Graphs ``compile_blocks(m, fullgraph=True)`` compiles for one call of the CogVideoX ``m``."""
    torch._dynamo.reset()
    cnt = CompileCounter()
    canvas_core.compile_blocks(m, backend=cnt, fullgraph=True)
    with torch.no_grad():
        run("cogvideox", m, kw)
    return cnt.frame_count


def test_compile_blocks_reuses_one_graph_for_every_looped_block():
    net = make_net(depth=6)
    graft_looped_blocks(net, max_loops=2, freeze="full")
    canvas_core.set_loops(net, 2)
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        ref = net(x)
    cnt = CompileCounter()
    canvas_core.compile_blocks(net, backend=cnt, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref)
        net(x)
    assert cnt.frame_count == 1


def test_compile_blocks_graph_count_does_not_grow_with_depth_on_a_grafted_backbone():
    kw = inputs("cogvideox")
    shallow, deep = _block_graphs(_cog(3), kw), _block_graphs(_cog(6), kw)
    plain = _block_graphs(_cog(6, graft=False), kw)
    # CogVideoX's first block gets strided views of its inputs: at most one graph more, at any depth
    assert shallow == deep == plain <= 2


def _installed_compiled():
    torch.manual_seed(0)
    m = diffusers.CogVideoXTransformer3DModel(**COG).eval()
    graft_looped_blocks(m, max_loops=4, freeze="full")
    kw = inputs("cogvideox")
    ad = get_adapter(m)
    ad.install_topology(m, VIDEO_TEXT, ad.token_layout(m, kw))
    cnt = CompileCounter()
    return m, kw, cnt, torch.compile(m, backend=cnt, fullgraph=True)


def test_installed_topology_compiles_once_for_a_repeated_call():
    m, kw, cnt, cm = _installed_compiled()
    with torch.no_grad():  # compiled first: an eager call would fill the runner cache before the trace
        first, second = run("cogvideox", cm, kw), run("cogvideox", cm, kw)
        assert cnt.frame_count == 1
        torch.testing.assert_close(first, run("cogvideox", m, kw))
        torch.testing.assert_close(second, first)


def test_installed_topology_reuses_each_loop_count_graph():
    m, kw, cnt, cm = _installed_compiled()
    with torch.no_grad():
        for n in (1, 2, 3, 4):
            canvas_core.set_loops(m, n)
            run("cogvideox", cm, kw)
            assert cnt.frame_count == n  # one graph per loop count (docs/looping.md)
        for n in (1, 3):
            canvas_core.set_loops(m, n)
            run("cogvideox", cm, kw)
    assert cnt.frame_count == 4
