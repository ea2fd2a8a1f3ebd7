"""Loop scopes on real backbones (tiny random-weight CogVideoX, Mochi, timm ViT) and the generic
adapter: identical to the backbone at every loop count (with and without a topology), training
opens the gates, loop checkpoints restore the trained outputs, test-time depth past the trained
count."""

from __future__ import annotations

import pytest
import torch

import canvas_core
from canvas_core.errors import CheckpointError
from canvas_core.looping import (
    CurriculumScheduler,
    LoopedSpan,
    ModelLoop,
    SharpeningSchedule,
    SpanMember,
    get_adapter,
    graft_looped_blocks,
    load_loop_checkpoint,
    save_loop_checkpoint,
    scope_of,
)
from canvas_core.schema import CanvasTopology, Connection

from tests.looping._backbone_setup import causal_temporal, inputs, make, run, user_layout
from tests.looping._scope_setup import make_net

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")

KINDS = ["cogvideox", "mochi", "vit"]
SCOPES = ["block", (1, 2), (0, 1), "stack", "model"]


def _topology(kind):
    if kind == "vit":
        return CanvasTopology(connections=[Connection(a, b) for a in ("top", "bottom", "extra")
                                           for b in ("top", "bottom")] + [Connection("extra", "extra")])
    return causal_temporal(("top", "bottom", "extra"))


def _install(kind, m, kw):
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, kw), 1)
    ad.install_topology(m, _topology(kind), tokens)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("topology", [False, True])
def test_every_scope_is_the_backbone_at_every_loop_count(kind, topology):
    kw = inputs(kind)
    ref_model = make(kind)
    if topology:  # the backbone with the topology: one plain loop of the block scope
        graft_looped_blocks(ref_model, max_loops=1)
        _install(kind, ref_model, kw)
    with torch.no_grad():
        ref = run(kind, ref_model, kw)
    for scope in SCOPES:
        if kind == "vit" and scope == "model":
            continue  # a classifier's output cannot re-enter (test_scope_errors)
        m = make(kind)
        parts, _ = graft_looped_blocks(m, max_loops=3, scope=scope)
        if topology:
            _install(kind, m, kw)
        for n in (1, 2, 3, 4):
            canvas_core.set_loops(m, n)
            with torch.no_grad():
                assert torch.equal(run(kind, m, kw), ref), (scope, n)
        if scope != "block":
            assert len(parts) == 1 and canvas_core.loop_counts(m).tolist() == [4, 4]


@pytest.mark.parametrize("kind", KINDS)
def test_span_layout_keeps_blocks_in_place_and_loops_both_streams(kind):
    ref = make(kind)
    bw, _ = graft_looped_blocks(ref, max_loops=2)
    loop = {id(p) for b in bw for p in b.loop_parameters()}
    names = {n for n, p in ref.named_parameters() if id(p) not in loop}
    m = make(kind)
    parts, _ = graft_looped_blocks(m, max_loops=2, scope="stack", freeze="full")
    span = parts[0]
    blocks = get_adapter(m).blocks(m)
    assert isinstance(blocks[0], LoopedSpan) and isinstance(blocks[1], SpanMember)
    assert scope_of(m) == (0, 2) and span.core_blocks() == [b.original for b in blocks]
    # backbone weights live where the block scope keeps them: <blocks>.<i>.original.*
    own = {id(p) for p in span.loop_parameters()}
    assert {n for n, p in m.named_parameters() if id(p) not in own} == names
    streams = 2 if kind != "vit" else 1
    emb = [n for n, _ in span.named_loop_parameters() if n.startswith("loop_emb")]
    assert len(emb) == streams  # video AND text streams get iteration embeddings
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {f"{get_adapter(m).block_attr}.0.{n}" for n, _ in span.named_loop_parameters()}


@pytest.mark.parametrize("kind", KINDS)
def test_training_opens_gates_and_a_checkpoint_restores_the_outputs(kind, tmp_path):
    kw = inputs(kind)
    with torch.no_grad():
        plain = run(kind, make(kind), kw)
    for scope in ((1, 2), "stack") + (("model",) if kind != "vit" else ()):
        opts = dict(inject="add", iter_norm="rms") if scope != "model" else dict(step_adapter="gated")
        m = make(kind)
        parts, head = graft_looped_blocks(m, max_loops=3, scope=scope, freeze="full", **opts)
        opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=0.05)
        m.train()
        for _ in range(3):
            loss = run(kind, m, kw).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        m.eval()
        assert parts[0].loop_gate.abs().min() > 0  # the gates opened
        with torch.no_grad():
            trained = run(kind, m, kw)
        assert not torch.equal(trained, plain), scope
        path = tmp_path / f"{kind}-{scope}.safetensors"
        save_loop_checkpoint(parts, head, str(path))
        fresh = make(kind)
        p2, h2 = graft_looped_blocks(fresh, max_loops=3, scope=scope, **opts)
        with torch.no_grad():
            assert torch.equal(run(kind, fresh, kw), plain)
        load_loop_checkpoint(p2, h2, str(path))
        with torch.no_grad():
            assert torch.equal(run(kind, fresh, kw), trained), scope
        other = make(kind)
        p3, h3 = graft_looped_blocks(other, max_loops=3, scope="block" if scope != "block" else "stack")
        before = [p.detach().clone() for p in p3[0].loop_parameters()]
        with pytest.raises(CheckpointError, match="scope"):
            load_loop_checkpoint(p3, h3, str(path))
        assert all(torch.equal(a, b) for a, b in zip(before, p3[0].loop_parameters()))


def test_span_indices_may_be_numpy_integers():
    import numpy as np

    m = make_net()
    graft_looped_blocks(m, scope=(np.int64(1), np.int64(3)), latent_channels=3)
    assert scope_of(m) == (1, 3)


def test_checkpoint_of_one_span_refuses_another_span(tmp_path):
    m = make_net()
    parts, head = graft_looped_blocks(m, max_loops=2, scope=(1, 3), latent_channels=3)
    save_loop_checkpoint(parts, head, str(tmp_path / "a.safetensors"))
    other = make_net()
    p2, h2 = graft_looped_blocks(other, max_loops=2, scope=(0, 2), latent_channels=3)
    with pytest.raises(CheckpointError, match=r"scope \(1, 3\).*scope \(0, 2\).*scope=\(1, 3\)"):
        load_loop_checkpoint(p2, h2, str(tmp_path / "a.safetensors"))


def test_beyond_the_trained_count_reuses_the_last_embedding_and_gate():
    torch.manual_seed(3)
    x = torch.randn(2, 5, 3)
    m = make_net()
    parts, _ = graft_looped_blocks(m, max_loops=2, scope=(1, 3), latent_channels=3)
    span = parts[0]
    with torch.no_grad():
        span.loop_emb.normal_()
        span.loop_gate.fill_(0.4)
    # the same span trained for 6 loops whose embeddings / gates repeat the last ones
    m6 = make_net()
    p6, _ = graft_looped_blocks(m6, max_loops=6, scope=(1, 3), latent_channels=3)
    with torch.no_grad():
        p6[0].loop_emb.copy_(torch.cat([span.loop_emb, span.loop_emb[-1:].expand(4, -1)]))
        p6[0].loop_gate.fill_(0.4)
    outs = []
    for n in (3, 5, 6):
        canvas_core.set_loops(m, n)
        canvas_core.set_loops(m6, n)
        with torch.no_grad():
            got = m(x)
            assert torch.allclose(got, m6(x), atol=1e-6)
        assert canvas_core.loop_counts(m).tolist() == [n, n]
        outs.append(got)
    assert not torch.allclose(outs[0], outs[1])  # the extra iterations do something


def test_block_scope_keeps_its_clamp_and_the_seed_api():
    m = make_net()
    blocks, _ = graft_looped_blocks(m, max_loops=2, latent_channels=3)
    assert canvas_core.set_loops(m, 5) == 5 and all(b.current_loops == 2 for b in blocks)
    canvas_core.set_loops(m, 1)
    assert all(b.current_loops == 1 for b in blocks)


@pytest.mark.parametrize("scope", [(1, 3), "stack", "model"])
def test_freeze_strategies_curriculum_and_sharpening_work_for_every_scope(scope):
    total = sum(p.numel() for p in make_net().parameters())
    m = make_net()
    parts, _ = graft_looped_blocks(m, max_loops=3, scope=scope, freeze="none", latent_channels=3)
    own = sum(p.numel() for p in parts[0].loop_parameters())
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == total + own
    canvas_core.freeze_half(m)
    assert not any(p.requires_grad for p in m.patch_embed.parameters())
    assert canvas_core.freeze_full(m) == total
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == own
    cur = CurriculumScheduler(max_loops=3, total_steps=30)
    assert cur.step(m, 0) == 1 and parts[0].current_loops == 1
    assert cur.step(parts, 29) == 3 and parts[0].current_loops == 3


@pytest.mark.parametrize("kind", ["cogvideox", "vit"])
def test_sharpening_applies_per_iteration_inside_a_span(kind):
    kw = inputs(kind)
    m = make(kind)
    with torch.no_grad():
        plain = run(kind, m, kw)
    sharp = SharpeningSchedule(max_loops=2, beta_min=2.0, beta_max=3.0)
    parts, _ = graft_looped_blocks(m, max_loops=2, scope="stack", sharpening=sharp)
    with torch.no_grad():
        got = run(kind, m, kw)
    assert not torch.allclose(got, plain)
    parts[0].set_sharpening(None)
    with torch.no_grad():
        assert torch.equal(run(kind, m, kw), plain)
    procs = get_adapter(m).attention_targets(m)
    assert all(getattr(p, "beta", 1.0) == 1.0 for p in procs)  # restored after each forward


def test_model_scope_rollout_matches_applying_the_model_n_times():
    torch.manual_seed(1)
    x = torch.randn(3, 4, 3)
    plain = make_net()
    m = make_net()
    parts, _ = graft_looped_blocks(m, max_loops=3, scope="model", gate_init_bias=1.0,
                                   reenter=torch.tanh, step_adapter="gated", latent_channels=3)
    assert isinstance(parts[0], ModelLoop)
    with torch.no_grad():
        want = x
        for n in (1, 2, 3, 5):
            canvas_core.set_loops(m, n)
            y = plain(x)
            for _ in range(n - 1):
                y = plain(torch.tanh(y))
            assert torch.allclose(m(x), y, atol=1e-6), n
    del want


def test_cogvideox_model_scope_feeds_the_latents_back():
    kind = "cogvideox"
    kw = inputs(kind)
    plain = make(kind)
    m = make(kind)
    graft_looped_blocks(m, max_loops=2, scope="model", gate_init_bias=1.0)
    with torch.no_grad():
        once = run(kind, plain, kw)
        twice = run(kind, plain, dict(kw, hidden_states=once))
        assert torch.allclose(run(kind, m, kw), twice, atol=1e-6)


@pytest.mark.parametrize("scope", SCOPES + ["stack+options", "model+adapter"])
def test_generic_adapter_every_scope_is_the_backbone(scope):
    torch.manual_seed(2)
    x = torch.randn(3, 5, 3)
    with torch.no_grad():
        ref = make_net()(x)
    m = make_net()
    opts = {"stack+options": dict(inject="concat", iter_norm="rms"),
            "model+adapter": dict(step_adapter="gated")}.get(scope, {})
    graft_looped_blocks(m, max_loops=2, scope=scope.split("+")[0] if isinstance(scope, str) else scope,
                        latent_channels=3, **opts)
    assert get_adapter(m).name == "generic"
    for n in (1, 2, 3, 4):
        canvas_core.set_loops(m, n)
        with torch.no_grad():
            assert torch.equal(m(x), ref), (scope, n)


def test_span_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(4)
    x = torch.randn(2, 5, 3)
    grads = []
    for ckpt in (False, True):
        m = make_net()
        parts, _ = graft_looped_blocks(m, max_loops=3, scope=(1, 3), inject="concat", freeze="none",
                                       gate_init_bias=0.3, use_gradient_checkpointing=ckpt, latent_channels=3)
        m.train()
        m(x).pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-6), k


@pytest.mark.parametrize("kind", ["cogvideox", "vit"])
def test_gated_topology_modules_inside_a_span_are_loop_parameters(kind, tmp_path):
    kw = inputs(kind)
    m = make(kind)
    with torch.no_grad():
        plain = run(kind, m, kw)
    parts, head = graft_looped_blocks(m, max_loops=3, scope=(1, 2), freeze="full")
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, kw), 1)
    conns = [Connection(a, b) for a in ("top", "bottom", "extra") for b in ("top", "bottom", "extra")]
    ad.install_topology(m, CanvasTopology(connections=conns + [Connection("top", "bottom", fn="gated")]), tokens)
    span = parts[0]
    extra = [(n, p) for n, p in span.named_loop_parameters() if ".canvas_fn." in n]
    assert {n.split(".")[0] for n, _ in extra} == {"block0", "block1"}  # prelude block and core block
    canvas_core.freeze_full(m)
    assert all(p.requires_grad for _, p in extra)
    for n in (1, 2, 4):
        canvas_core.set_loops(m, n)
        with torch.no_grad():
            assert torch.equal(run(kind, m, kw), plain)
    with torch.no_grad():
        for n_, p in extra:
            if n_.endswith(".gate"):
                p.fill_(0.5)
        span.loop_gate.fill_(0.5)
        want = run(kind, m, kw)
    assert not torch.equal(want, plain)
    save_loop_checkpoint(parts, head, str(tmp_path / "t.safetensors"))
    with torch.no_grad():
        for _, p in span.named_loop_parameters():
            p.zero_()
    load_loop_checkpoint(parts, head, str(tmp_path / "t.safetensors"))
    with torch.no_grad():
        assert torch.equal(run(kind, m, kw), want)


def test_new_names_are_exported_from_canvas_core():
    import canvas_core.looping as looping

    for n in ("set_loops", "loop_counts", "loop_stats", "LoopedSpan", "ModelLoop", "RandomDepthScheduler"):
        assert getattr(canvas_core, n) is getattr(looping, n)
