"""``loop_counts`` / ``loop_stats`` of a block-scope graft report the last forward under
``torch.compile`` too, as the span and model scopes do.

The block wrapper skipped its record while compiling, so a compiled forward left an earlier eager
forward's counts in place (or none: "no forward has run yet")."""

from __future__ import annotations

import pytest
import torch

import canvas_core
from tests.looping._scope_setup import make_net, randomize_loop_params

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _grafted(scope="block"):
    m = make_net()
    canvas_core.graft_looped_blocks(m, max_loops=3, scope=scope, latent_channels=3)
    for k, part in enumerate(canvas_core.looping.scopes.loop_parts_of(m)):
        randomize_loop_params(part, torch.Generator().manual_seed(k))
    return m


@pytest.mark.parametrize("scope", ["block", (1, 3), "model"])
@pytest.mark.parametrize("eager_first", [True, False])
def test_compiled_forward_is_what_loop_counts_and_loop_stats_report(scope, eager_first):
    x = torch.randn(3, 5, 3)
    ref = _grafted(scope)  # the same graft run eagerly: the values a report must give
    canvas_core.set_loops(ref, 2)
    with torch.no_grad():
        ref(x[:2])
    want = canvas_core.loop_stats(ref)

    m = _grafted(scope)
    if eager_first:
        canvas_core.set_loops(m, 3)
        with torch.no_grad():
            m(x)
    cm = torch.compile(m, backend="eager", fullgraph=scope != "model")
    canvas_core.set_loops(cm, 2)
    with torch.no_grad():
        cm(x[:2])
    assert canvas_core.loop_counts(cm).tolist() == [2, 2]
    got = canvas_core.loop_stats(cm)
    assert (got["loops"], got["iterations"], got["active"], got["core_rows"]) == (2, 2, [2, 2], 4)
    for k in ("rel_change", "state_norm"):
        assert got[k] == pytest.approx(want[k], rel=1e-5)
    if scope == "block":
        assert len(got["per_block"]) == 4


def test_block_stats_follow_each_compiled_call_without_recompiling():
    m = _grafted()
    cnt = torch._dynamo.testing.CompileCounter()
    cm = torch.compile(m, backend=cnt, fullgraph=True, dynamic=True)
    canvas_core.set_loops(cm, 2)
    for b in (2, 3, 4):
        with torch.no_grad():
            cm(torch.randn(b, 5, 3))
        assert canvas_core.loop_counts(cm).tolist() == [2] * b
        assert canvas_core.loop_stats(cm)["active"] == [b, b]
    assert cnt.frame_count == 1  # the record adds no graph break and no recompile per batch size
    canvas_core.set_loops(cm, 3)  # set, not yet run: the report is still the last forward's
    assert canvas_core.loop_stats(cm)["loops"] == 2
