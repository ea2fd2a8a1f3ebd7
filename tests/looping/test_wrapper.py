"""LoopedBlockWrapper: exact identity at init for every loop count, the update rule, checkpointing,
sharpening hooks and errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from canvas_core.errors import BackboneError, CanvasError, CanvasTypeError, ShapeError
from canvas_core.looping import BlockIO, LoopedBlockWrapper, SharpeningSchedule


class MLPBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x, scale=1.0):
        return x + scale * torch.tanh(self.fc(self.norm(x)))


class TwoStream(nn.Module):
    """Returns (h, c, extra) like a dual-stream DiT block with an extra output."""

    def __init__(self, d, dc):
        super().__init__()
        self.a = nn.Linear(d + dc, d)
        self.b = nn.Linear(d + dc, dc)

    def forward(self, h, c, temb):
        z = torch.cat([h, c], -1) + temb
        return h + torch.sin(self.a(z)), c + torch.cos(self.b(z)), "extra"


def reference_loop(block_fn, states, embs, gates, n):
    """The documented rule, written independently of the wrapper."""
    out = block_fn(*[s + e[0] for s, e in zip(states, embs)])
    states = out
    for i in range(1, n):
        new = block_fn(*[s + e[i] for s, e in zip(states, embs)])
        states = tuple(s + gates[i - 1] * (nw - s) for s, nw in zip(states, new))
    return states


@pytest.mark.parametrize("loops", [1, 2, 3, 5])
def test_identity_at_init_every_loop_count(loops):
    torch.manual_seed(0)
    blk = MLPBlock(8)
    x = torch.randn(2, 5, 8)
    ref = blk(x, scale=0.5)
    w = LoopedBlockWrapper(blk, max_loops=5, embed_dim=8)
    w.set_loops(loops)
    assert torch.equal(w(x, scale=0.5), ref)
    w.train()
    assert torch.equal(w(x, scale=0.5), ref)


def test_identity_two_streams_tuple_outputs_kwargs():
    torch.manual_seed(0)
    blk = TwoStream(6, 4)
    h, c = torch.randn(2, 3, 6), torch.randn(2, 3, 4)
    temb = torch.randn(2, 1, 10)
    ref = blk(h, c, temb)
    w = LoopedBlockWrapper(
        blk, max_loops=3, embed_dim=6, io=BlockIO(("h", "c")), stream_dims=(6, 4)
    )
    for call in (
        lambda: w(h, c, temb),
        lambda: w(h=h, c=c, temb=temb),
        lambda: w(h, c=c, temb=temb),
    ):
        out = call()
        assert isinstance(out, tuple) and out[2] == "extra"
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


def test_update_rule_matches_reference_with_trained_params():
    torch.manual_seed(1)
    blk = TwoStream(6, 4)
    w = LoopedBlockWrapper(
        blk, max_loops=4, embed_dim=6, io=BlockIO(("h", "c")), stream_dims=(6, 4)
    )
    with torch.no_grad():
        for p in w.loop_parameters():
            p.normal_()
    h, c, temb = torch.randn(2, 3, 6), torch.randn(2, 3, 4), torch.randn(2, 1, 10)
    for n in (1, 2, 4):
        w.set_loops(n)
        out = w(h, c, temb)
        ref = reference_loop(
            lambda a, b: blk(a, b, temb)[:2], (h, c), (w.loop_emb, w.loop_emb_1), w.loop_gate, n
        )
        torch.testing.assert_close(out[0], ref[0])
        torch.testing.assert_close(out[1], ref[1])


def test_parameter_shapes_and_count():
    w = LoopedBlockWrapper(MLPBlock(8), max_loops=3, embed_dim=8)
    assert w.loop_emb.shape == (3, 8) and w.loop_gate.shape == (2,)
    assert w.trainable_params() == 3 * 8 + 2
    w2 = LoopedBlockWrapper(
        TwoStream(6, 4), max_loops=3, embed_dim=6, io=BlockIO(("h", "c")), stream_dims=(6, 4)
    )
    assert w2.trainable_params() == 3 * 6 + 3 * 4 + 2
    assert "max_loops=3" in repr(w2)


def test_gradient_checkpointing_same_grads():
    torch.manual_seed(2)
    blk = MLPBlock(8)
    x = torch.randn(2, 5, 8)
    grads = []
    for ckpt in (False, True):
        w = LoopedBlockWrapper(blk, max_loops=3, embed_dim=8, use_gradient_checkpointing=ckpt)
        with torch.no_grad():
            w.loop_gate.fill_(0.3)
            w.loop_emb.normal_(generator=torch.Generator().manual_seed(0))
        w.train()
        blk.zero_grad()
        w(x).pow(2).sum().backward()
        grads.append(
            (w.loop_emb.grad.clone(), w.loop_gate.grad.clone(), blk.fc.weight.grad.clone())
        )
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_gates_get_gradient_at_init():
    torch.manual_seed(3)
    w = LoopedBlockWrapper(MLPBlock(8), max_loops=3, embed_dim=8)
    w.train()
    w(torch.randn(2, 5, 8)).pow(2).sum().backward()
    assert w.loop_gate.grad.abs().sum() > 0 and w.loop_emb.grad[0].abs().sum() > 0


class BetaProbe(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.beta = 1.0
        self.seen = []
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        self.seen.append(self.beta)
        return x + self.beta * self.fc(x)


class ProbeBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attn = BetaProbe(d)

    def forward(self, x):
        return self.attn(x)


def test_sharpening_sets_beta_per_loop_and_restores():
    blk = ProbeBlock(4)
    sched = SharpeningSchedule(max_loops=3, beta_min=1.0, beta_max=4.0)
    w = LoopedBlockWrapper(
        blk, max_loops=3, embed_dim=4, sharpening=sched, use_gradient_checkpointing=True
    )
    w.eval()
    w(torch.randn(1, 2, 4))
    assert blk.attn.seen == [1.0, 2.5, 4.0]
    assert blk.attn.beta == 1.0
    # recomputation in backward sees the same beta as the forward of that loop
    blk.attn.seen.clear()
    w.train()
    with torch.no_grad():
        w.loop_gate.fill_(0.5)
    w(torch.randn(1, 2, 4)).sum().backward()
    assert sorted(blk.attn.seen) == sorted([1.0, 2.5, 4.0] * 2)


def test_sharpening_without_beta_target_is_refused():
    with pytest.raises(BackboneError, match="beta"):
        LoopedBlockWrapper(MLPBlock(4), max_loops=2, embed_dim=4, sharpening=SharpeningSchedule(2))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_max_loops(bad):
    with pytest.raises(BackboneError):
        LoopedBlockWrapper(MLPBlock(4), max_loops=bad, embed_dim=4)


def test_set_loops_errors_and_clamping():
    w = LoopedBlockWrapper(MLPBlock(4), max_loops=3, embed_dim=4)
    for bad in (0, -1, "2", 1.0):
        with pytest.raises(BackboneError, match="int >= 1"):
            w.set_loops(bad)
    w.set_loops(7)  # beyond max_loops: clamped, as in canvas-engineering
    assert w.current_loops == 3
    assert f"trainable_params={w.trainable_params()}" in repr(w)


def test_input_errors_are_canvas_errors():
    w = LoopedBlockWrapper(MLPBlock(4), max_loops=2, embed_dim=4)
    with pytest.raises(ShapeError, match="last dim 5"):
        w(torch.randn(1, 2, 5))
    with pytest.raises(CanvasTypeError):
        w()
    with pytest.raises(CanvasTypeError):
        w([1, 2])
    with pytest.raises(CanvasTypeError):
        LoopedBlockWrapper(lambda x: x, max_loops=2, embed_dim=4)
    w2 = LoopedBlockWrapper(
        MLPBlock(4), max_loops=2, embed_dim=4, io=BlockIO(("a", "b")), stream_dims=(4, 4)
    )
    with pytest.raises(CanvasError, match="one tensor"):
        w2(torch.randn(1, 2, 4), torch.randn(1, 2, 4))


def test_bf16_block_keeps_dtype_and_identity():
    torch.manual_seed(4)
    blk = MLPBlock(8).to(torch.bfloat16)
    x = torch.randn(2, 3, 8, dtype=torch.bfloat16)
    w = LoopedBlockWrapper(blk, max_loops=3, embed_dim=8)
    out = w(x)
    assert out.dtype == torch.bfloat16 and torch.equal(out, blk(x))
    assert w.loop_emb.dtype == torch.float32


def test_torch_compile_forward_and_backward():
    torch.manual_seed(5)
    w = LoopedBlockWrapper(MLPBlock(8), max_loops=3, embed_dim=8)
    with torch.no_grad():
        w.loop_gate.fill_(0.5)
        w.loop_emb.normal_()
    x = torch.randn(2, 4, 8)
    w.eval()
    compiled = torch.compile(w, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), w(x))
    w.train()
    compiled = torch.compile(w, backend="aot_eager")
    compiled(x).pow(2).sum().backward()
    g = w.loop_gate.grad.clone()
    w.zero_grad()
    w(x).pow(2).sum().backward()
    torch.testing.assert_close(g, w.loop_gate.grad)


class CoreAttnBlock(nn.Module):
    """A block built from canvas-core's own CrossAttention (exposes `beta`)."""

    def __init__(self, d):
        super().__init__()
        from canvas_core.attention import CrossAttention

        self.attn = CrossAttention(d_model=d, n_heads=2)

    def forward(self, x):
        return x + self.attn(x, x, x)


def test_sharpening_drives_canvas_core_attention_beta():
    pytest.importorskip("canvas_core.attention")
    torch.manual_seed(6)
    blk = CoreAttnBlock(8)
    sched = SharpeningSchedule(max_loops=2, beta_min=1.0, beta_max=3.0)
    w = LoopedBlockWrapper(blk, max_loops=2, embed_dim=8, sharpening=sched).eval()
    with torch.no_grad():
        w.loop_gate.fill_(1.0)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        got = w(x)
        # reference: loop 0 at beta 1, loop 1 (gate 1 -> replaces h) at beta 3
        h = blk(x)
        blk.attn.beta = 3.0
        ref = blk(h)
        blk.attn.beta = None
    torch.testing.assert_close(got, ref)
    assert blk.attn.beta is None  # restored


@settings(max_examples=25, deadline=None)
@given(
    depth=st.integers(1, 3),
    d=st.sampled_from([4, 8, 12]),
    max_loops=st.integers(1, 5),
    data=st.data(),
)
def test_identity_property(depth, d, max_loops, data):
    torch.manual_seed(depth * 100 + d)
    blocks = nn.ModuleList([MLPBlock(d) for _ in range(depth)])
    x = torch.randn(2, 3, d)
    ref = x
    for b in blocks:
        ref = b(ref)
    wrapped = [LoopedBlockWrapper(b, i, max_loops, d) for i, b in enumerate(blocks)]
    n = data.draw(st.integers(1, max_loops))
    out = x
    for w in wrapped:
        w.set_loops(n)
        out = w(out)
    assert torch.equal(out, ref)
