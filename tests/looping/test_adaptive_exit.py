"""Span rule against its obvious reference (hypothesis), adaptive exit (per-sample counts, finished
rows not computed again, exit_tol=0 is fixed depth), loop_stats, and the randomized-depth
schedule."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import canvas_core
from canvas_core.errors import CanvasError
from canvas_core.looping import RandomDepthScheduler, graft_looped_blocks

from tests.looping._scope_setup import RowCounter, make_net, randomize_loop_params, reference_span

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")


@settings(max_examples=25, deadline=None)
@given(
    span=st.sampled_from([(0, 1), (1, 3), (0, 4), (2, 4)]),
    inject=st.sampled_from(["none", "add", "concat"]),
    update=st.sampled_from(["gated", "damped", "replace"]),
    iter_norm=st.sampled_from([None, "rms"]),
    iter_embed=st.booleans(),
    max_loops=st.integers(1, 3),
    n=st.integers(1, 5),
    tol=st.sampled_from([0.0, 1e-3, 0.05, 0.3, 10.0]),
    batch=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_span_equals_the_reference_per_sample(span, inject, update, iter_norm, iter_embed, max_loops,
                                              n, tol, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    m = make_net(seed % 7)
    parts, _ = graft_looped_blocks(m, max_loops=max_loops, scope=span, inject=inject, update=update,
                                   iter_norm=iter_norm, iter_embed=iter_embed,
                                   damping=0.6 if update == "damped" else 0.5,
                                   latent_channels=3)
    randomize_loop_params(parts[0], gen)
    canvas_core.set_loops(m, n, exit_tol=tol)
    x = torch.randn(batch, 5, 3, generator=gen)
    # identical samples and an all-zero sample are edge cases of the exit rule
    if batch >= 3:
        x[1] = x[0]
        x[2] = 0
    with torch.no_grad():
        got = m(x)
        want, counts = reference_span(m, parts[0], x, *span, n, tol)
    assert torch.allclose(got, want, atol=2e-5, rtol=1e-4)
    assert torch.equal(canvas_core.loop_counts(m), counts)
    assert int(counts.max()) <= n and int(counts.min()) >= min(n, 2 if tol == 0 else 1)


def test_exit_tol_zero_is_exactly_fixed_depth():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 3)
    m = make_net()
    parts, _ = graft_looped_blocks(m, max_loops=3, scope=(1, 3), inject="add", latent_channels=3)
    randomize_loop_params(parts[0], torch.Generator().manual_seed(1))
    canvas_core.set_loops(m, 4)
    with torch.no_grad():
        fixed = m(x)
    canvas_core.set_loops(m, 4, exit_tol=0.0)
    with torch.no_grad():
        assert torch.equal(m(x), fixed)
    assert canvas_core.loop_counts(m).tolist() == [4] * 4


@pytest.mark.parametrize("scope", [(1, 3), "model"])
def test_finished_samples_are_not_computed_again(scope):
    """A large tolerance stops every sample after two iterations; a sample whose state does not
    move (gate 0 on its rows is impossible, so: a tolerance between the samples' changes) stops
    while the others go on, and the core sees only the active rows."""
    torch.manual_seed(0)
    m = make_net()
    parts, _ = graft_looped_blocks(m, max_loops=2, scope=scope, update="replace", latent_channels=3)
    x = torch.randn(4, 5, 3)
    x[2:] *= 30.0  # large inputs: the tanh blocks saturate, the state barely changes
    core = m.blocks[1:3] if scope != "model" else list(m.blocks)
    counter = RowCounter([b.original if hasattr(b, "original") else b for b in core][:1])
    canvas_core.set_loops(m, 8, exit_tol=0.0)
    with torch.no_grad():
        m(x)
    full_rows = sum(counter.rows)
    stats = canvas_core.loop_stats(m)
    assert full_rows == 8 * 4 and stats["core_rows"] == 32 and stats["active"] == [4] * 8
    rel = stats["rel_change"]
    counter.rows.clear()
    canvas_core.set_loops(m, 8, exit_tol=1e6)
    with torch.no_grad():
        m(x)
    assert canvas_core.loop_counts(m).tolist() == [2, 2, 2, 2]
    assert sum(counter.rows) == 2 * 4
    # a tolerance between the samples' own changes: some stop, the rest go on, on fewer rows
    with torch.no_grad():
        ref_counts = []
        for tol in sorted({float(v) for v in rel[1:]})[:1]:
            canvas_core.set_loops(m, 8, exit_tol=tol * 1.0001)
            counter.rows.clear()
            out = m(x)
            counts = canvas_core.loop_counts(m)
            ref_counts = counts.tolist()
            assert sum(counter.rows) == int(counts.sum()) < 32
            assert min(counter.rows) < 4  # later iterations ran on the active subset only
            # each sample equals its own fixed-depth run with its count
            for b in range(4):
                canvas_core.set_loops(m, int(counts[b]))
                assert torch.allclose(m(x[b:b + 1]), out[b:b + 1], atol=1e-6)
    counter.close()
    assert ref_counts


@pytest.mark.parametrize("kind", ["cogvideox", "mochi", "vit"])
def test_backbone_adaptive_exit_runs_the_active_rows(kind):
    """Per-sample exit inside a real backbone: the timestep embedding (B, D) and Mochi's text mask
    are split with the rows, the rotary tables (S, d) are not, and the stopped sample equals its own
    fixed-depth run."""
    from tests.looping._backbone_setup import inputs, make, run

    kw = inputs(kind)
    m = make(kind)
    parts, _ = graft_looped_blocks(m, max_loops=2, scope="stack", update="damped", damping=0.5)
    counter = RowCounter([parts[0].original])

    def sample(b):
        return {k: (v[b:b + 1] if k in ("x", "hidden_states", "encoder_hidden_states", "timestep",
                                        "encoder_attention_mask") else v) for k, v in kw.items()}

    canvas_core.set_loops(m, 5)
    with torch.no_grad():
        fixed = run(kind, m, kw)
        assert sum(counter.rows) == 10 and len(canvas_core.loop_stats(m)["rel_change"]) == 5
        rel = [(run(kind, m, sample(b)), canvas_core.loop_stats(m)["rel_change"][1])[1] for b in (0, 1)]
    assert rel[0] != rel[1]
    slow, fast = (0, 1) if rel[0] > rel[1] else (1, 0)
    counter.rows.clear()
    canvas_core.set_loops(m, 5, exit_tol=(rel[0] + rel[1]) / 2)
    with torch.no_grad():
        out = run(kind, m, kw)
    counts = canvas_core.loop_counts(m)
    assert counts[fast] == 2 and counts[slow] > 2
    assert counter.rows[:2] == [2, 2] and set(counter.rows[2:]) == {1}  # only the active row
    assert canvas_core.loop_stats(m)["core_rows"] == int(counts.sum()) == sum(counter.rows) < 10
    canvas_core.set_loops(m, 2)
    with torch.no_grad():
        alone = run(kind, m, sample(fast))
    assert torch.allclose(out[fast:fast + 1], alone, atol=1e-5)
    assert torch.allclose(out[slow], fixed[slow], atol=1e-5) or counts[slow] < 5
    counter.close()


def test_loop_stats_show_what_the_loops_do():
    m = make_net()
    graft_looped_blocks(m, max_loops=3, scope="stack", latent_channels=3)
    with torch.no_grad():
        m(torch.randn(2, 4, 3))
    s = canvas_core.loop_stats(m)
    assert s["scope"] == "(0, 4)" and s["iterations"] == 3 and s["loops"] == 3
    assert s["rel_change"][0] > 0 and s["rel_change"][1:] == [0.0, 0.0]  # gates at 0: nothing moves
    assert all(v > 0 for v in s["state_norm"]) and s["active"] == [2, 2, 2]


def test_block_scope_stats_per_block():
    m = make_net()
    blocks, _ = graft_looped_blocks(m, max_loops=3, latent_channels=3)
    with torch.no_grad():
        blocks[2].loop_gate.fill_(0.5)
        m(torch.randn(2, 4, 3))
    s = canvas_core.loop_stats(m)
    assert s["scope"] == "block" and s["iterations"] == 3 and len(s["per_block"]) == 4
    moved = [b["rel_change"][1] > 0 for b in s["per_block"]]
    assert moved == [False, False, True, False]  # only the block whose gate is open moves
    assert s["rel_change"][1] == pytest.approx(s["per_block"][2]["rel_change"][1] / 4)
    assert canvas_core.loop_counts(m).tolist() == [3, 3]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 40), start=st.integers(0, 2 ** 30))
def test_random_depth_seeds_are_independent_streams_not_shifts(seed, start):
    """Seed ``s + 1`` must not replay seed ``s``'s draws a fixed number of steps later (the old
    ``seed * 1_000_003 + step`` seeding did, at a shift of 1,000,003 steps): for shifts 0..200 and
    the old alias, the draws of ``s + 1`` differ from the shifted draws of ``s``; a seed still
    gives the same draws every time."""
    a = RandomDepthScheduler(max_loops=1024, seed=seed)
    b = RandomDepthScheduler(max_loops=1024, seed=seed + 1)
    window = [b.get_loops(start + k) for k in range(16)]
    assert window == [RandomDepthScheduler(max_loops=1024, seed=seed + 1).get_loops(start + k) for k in range(16)]
    base = [a.get_loops(start + k) for k in range(216)]
    for shift in range(201):
        assert window != base[shift:shift + 16], f"seed {seed + 1} replays seed {seed} shifted by {shift} steps"
    assert window != [a.get_loops(start + 1_000_003 + k) for k in range(16)]


def test_random_depth_is_seeded_and_follows_its_distribution():
    u = RandomDepthScheduler(max_loops=5, min_loops=2, seed=3)
    draws = [u.get_loops(k) for k in range(3000)]
    assert draws == [RandomDepthScheduler(max_loops=5, min_loops=2, seed=3).get_loops(k) for k in range(3000)]
    assert draws != [RandomDepthScheduler(max_loops=5, min_loops=2, seed=4).get_loops(k) for k in range(3000)]
    assert set(draws) == {2, 3, 4, 5} and all(abs(draws.count(v) / 3000 - 0.25) < 0.04 for v in (2, 3, 4, 5))
    h = RandomDepthScheduler(max_loops=64, distribution="lognormal_poisson", mean=3.0, seed=0)
    hd = [h.get_loops(k) for k in range(4000)]
    assert 3.5 < sum(hd) / len(hd) < 4.5 and max(hd) > 8  # ~ mean + 1, heavy tail
    m = make_net()
    parts, _ = graft_looped_blocks(m, max_loops=2, scope=(0, 2), latent_channels=3)
    n = RandomDepthScheduler(max_loops=6, seed=1).step(m, 7)
    assert parts[0].current_loops == n  # spans take counts past max_loops
    with pytest.raises(CanvasError, match="distribution"):
        RandomDepthScheduler(distribution="normal")
    with pytest.raises(CanvasError, match="min_loops"):
        RandomDepthScheduler(max_loops=2, min_loops=3)


def test_random_depth_huge_seed_step_and_mean_draw():
    """A seed or step past Python's 4,300-digit int -> str limit, and a mean whose log-normal
    draw passes exp's float range, still draw a count (were ValueError / OverflowError)."""
    big = 10 ** 5000
    r = RandomDepthScheduler(max_loops=6, seed=big)
    assert [r.get_loops(k) for k in range(4)] == [RandomDepthScheduler(max_loops=6, seed=big).get_loops(k) for k in range(4)]
    assert 1 <= RandomDepthScheduler(max_loops=6).get_loops(big) <= 6
    h = RandomDepthScheduler(max_loops=8, distribution="lognormal_poisson", mean=1e308, sigma=1.0)
    assert all(h.get_loops(k) == 8 for k in range(100))
