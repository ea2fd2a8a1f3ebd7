"""Loop scopes under ``torch.compile``: the model scope (decorated forwards, adaptive exit with its
graph break), a span's graph reused from the second call on (one graph per loop count, not one
per call), and a changing sharpening schedule (no graph break, no recompile per value).
Graphs are counted with dynamo's ``CompileCounter`` backend."""

from __future__ import annotations

import functools

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import canvas_core
from canvas_core.looping import RandomDepthScheduler, SharpeningSchedule, graft_looped_blocks

from tests.looping._backbone_setup import inputs, make, run
from tests.looping._scope_setup import Net, make_net, randomize_loop_params

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _scaled(fn):
    """A forward decorator in the manner of diffusers' ``apply_lora_scale`` (``functools.wraps``)."""

    @functools.wraps(fn)
    def inner(self, *args, **kwargs):
        return fn(self, *args, **kwargs)

    return inner


class DecoratedNet(Net):
    @_scaled
    def forward(self, x):
        return super().forward(x)


# --- scope="model" -----------------------------------------------------------------------------
def test_model_scope_compiles_mochi_whose_forward_is_decorated():
    m, kw = make("mochi"), inputs("mochi")
    graft_looped_blocks(m, max_loops=2, scope="model", gate_init_bias=1.0)
    m.eval()
    cnt = CompileCounter()
    compiled = torch.compile(m, backend=cnt, fullgraph=True)
    with torch.no_grad():
        for n in (1, 2):
            canvas_core.set_loops(m, n)
            torch.testing.assert_close(run("mochi", compiled, kw), run("mochi", m, kw))
    assert cnt.frame_count == 2  # one graph per loop count


@pytest.mark.parametrize("decorated", [False, True])
def test_model_scope_adaptive_exit_compiles_without_fullgraph(decorated):
    # the exit decides per sample from tensor values: a graph break, after which the loop once
    # called model.forward (itself) again until the recursion limit
    torch.manual_seed(0)
    m = (DecoratedNet() if decorated else Net()).eval()
    (loop,), _ = graft_looped_blocks(m, max_loops=3, scope="model", gate_init_bias=0.5, latent_channels=3)
    x = torch.randn(4, 6, 3)
    x[:2] *= 0.0  # two samples that settle at once: the exit drops rows from the batch
    canvas_core.set_loops(m, 6, exit_tol=0.05)
    with torch.no_grad():
        want = m(x)
        want_counts = canvas_core.loop_counts(m)
        got = torch.compile(m, backend="eager")(x)
    torch.testing.assert_close(got, want)
    assert torch.equal(canvas_core.loop_counts(m), want_counts)
    assert want_counts.min() < 6  # the exit did drop rows


def test_model_scope_adaptive_exit_compiles_for_cogvideox():
    m, kw = make("cogvideox"), inputs("cogvideox")
    graft_looped_blocks(m, max_loops=4, scope="model", gate_init_bias=1.0)
    m.eval()
    canvas_core.set_loops(m, 4, exit_tol=0.05)
    with torch.no_grad():
        want = run("cogvideox", m, kw)
        got = run("cogvideox", torch.compile(m, backend="eager"), kw)
    torch.testing.assert_close(got, want)
    assert canvas_core.loop_counts(m).tolist() == [4, 4]


# --- span graphs per loop count ------------------------------------------------------------------
def test_a_compiled_span_reuses_its_first_graph():
    m = make_net()
    (span,), _ = graft_looped_blocks(m, max_loops=3, scope="stack")
    randomize_loop_params(span, torch.Generator().manual_seed(0))
    x = torch.randn(2, 5, 3)
    cnt = CompileCounter()
    compiled = torch.compile(m, backend=cnt, fullgraph=True)
    with torch.no_grad():
        for n in (1, 1, 2, 3, 2, 1, 3):
            canvas_core.set_loops(m, n)
            torch.testing.assert_close(compiled(x), m(x))
    assert cnt.frame_count == 3  # one graph per loop count, each reused


def test_random_depth_training_of_a_compiled_span_stays_within_the_recompile_limit():
    m = make_net().train()
    graft_looped_blocks(m, max_loops=8, scope="stack", freeze="full")
    x = torch.randn(2, 5, 3)
    cnt = CompileCounter()
    compiled = torch.compile(m, backend=cnt, fullgraph=True)
    depth = RandomDepthScheduler(max_loops=8, seed=0)
    seen = set()
    for step in range(40):
        seen.add(depth.step(m, step))
        compiled(x).pow(2).mean().backward()
    assert len(seen) == 8 and cnt.frame_count == 8  # the default recompile limit is 8


# --- sharpening ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,scope,fullgraph", [("vit", "block", True), ("vit", "stack", False),
                                                  ("cogvideox", "stack", True)])
def test_a_changing_sharpening_schedule_compiles_once_more_and_no_more(kind, scope, fullgraph):
    m, kw = make(kind), inputs(kind)
    parts, _ = graft_looped_blocks(m, max_loops=3, scope=scope)
    with torch.no_grad():
        for p in parts:
            for name, w in p.named_loop_parameters():
                if "gate" in name:
                    w.fill_(0.5)
    m.eval()
    cnt = CompileCounter()
    compiled = torch.compile(m, backend=cnt, fullgraph=fullgraph)
    for beta_max in (4.0, 4.0, 2.0, 3.0, 5.0, 0.5):
        for p in parts:
            p.set_sharpening(SharpeningSchedule(max_loops=3, beta_min=1.0, beta_max=beta_max))
        with torch.no_grad():
            torch.testing.assert_close(run(kind, compiled, kw), run(kind, m, kw))
    # the first schedule's values are constants of the first graph; once one changes, beta is a
    # symbolic float of the second, which serves every later value (no graph break either)
    assert cnt.frame_count == 2
