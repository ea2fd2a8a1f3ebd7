"""Regression tests for looping defects: sharpening read again in backward, a forward entering a
span at a member, stale block-scope records, width-changing blocks, unchecked direct constructors,
an ignored ``gate_init_bias`` and the extra outputs of the adaptive exit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import canvas_core as cc
from canvas_core.errors import BackboneError, SizeLimitError, ShapeError
from canvas_core.looping import BlockIO, LoopedSpan, ModelLoop


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln, self.fc = nn.LayerNorm(d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.fc(self.ln(x)))


class Tiny(nn.Module):
    def __init__(self, d: int = 16, depth: int = 4) -> None:
        super().__init__()
        self.embed_dim = d
        self.patch_embed = nn.Linear(3, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(depth))
        self.proj_out = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor, first: int = 0, last: int = 99) -> torch.Tensor:
        h = self.patch_embed(x)
        for b in self.blocks[first:last]:
            h = b(h)
        return self.proj_out(h)


class Att(nn.Module):
    """An attention-like module exposing ``beta`` (the sharpening target)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.beta = nn.Linear(8, 8), 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.beta * self.fc(x))


class AttBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.att = Att()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.att(x)


class AttNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_dim = 8
        self.blocks = nn.ModuleList([AttBlock(), AttBlock()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x


def _sharpened_grad(scope: object, change: bool) -> torch.Tensor:
    torch.manual_seed(0)
    m = AttNet().train()
    parts, _ = cc.graft_looped_blocks(m, max_loops=2, freeze="none", latent_channels=8, scope=scope,
                                      sharpening=cc.SharpeningSchedule(2, 1.0, 1.0))
    with torch.no_grad():
        for p in parts:
            p.loop_gate.fill_(0.5)
    out = m(torch.randn(2, 3, 8))
    if change:  # after the forward, before the backward that recomputes each loop
        for p in parts:
            p.set_sharpening(cc.SharpeningSchedule(2, 1.0, 8.0))
    out.sum().backward()
    return m.blocks[0].original.att.fc.weight.grad.clone()


@pytest.mark.parametrize("scope", ["block", "stack"])
def test_t16_loop_sharpening_changed_before_backward_keeps_gradients(scope: object) -> None:
    assert torch.equal(_sharpened_grad(scope, False), _sharpened_grad(scope, True))


def test_t16_loop_forward_entering_span_at_member_is_refused() -> None:
    torch.manual_seed(0)
    m, ref = Tiny(), Tiny()
    ref.load_state_dict(m.state_dict())
    cc.graft_looped_blocks(m, max_loops=2, scope=(1, 3), latent_channels=3)
    x = torch.randn(2, 6, 3)
    with torch.no_grad():
        assert torch.equal(m(x), ref(x))
        assert torch.equal(m(x, first=3), ref(x, first=3))  # after the span: fine
        with pytest.raises(BackboneError, match=r"block 2 .*span \(1, 3\)"):
            m(x, first=2)
        assert torch.equal(m(x), ref(x))  # a full forward still works after the refusal
        with pytest.raises(BackboneError, match=r"block 2 .*span \(1, 3\)"):
            m(x, first=2)  # right after a full forward too


def test_t16_loop_span_backward_with_member_still_runs() -> None:
    torch.manual_seed(0)
    m = Tiny().train()
    cc.graft_looped_blocks(m, max_loops=3, scope=(0, 3), latent_channels=3, freeze="none")
    m(torch.randn(2, 6, 3)).sum().backward()
    assert m.blocks[2].original.fc.weight.grad is not None


def test_t16_loop_block_scope_stats_report_only_the_last_forward() -> None:
    torch.manual_seed(0)
    m = Tiny()
    cc.graft_looped_blocks(m, max_loops=3, latent_channels=3)
    with torch.no_grad():
        cc.set_loops(m, 3)
        m(torch.randn(4, 6, 3))
        cc.set_loops(m, 1)
        m(torch.randn(2, 6, 3), first=2)  # runs blocks 2, 3 only: 1 loop, batch 2
    st = cc.loop_stats(m)
    assert cc.loop_counts(m).tolist() == [1, 1]
    assert st["loops"] == 1 and st["iterations"] == 1 and st["active"] == [2]
    assert [len(b["rel_change"]) for b in st["per_block"]] == [1, 1]
    assert st["blocks_not_run"] == [0, 1]
    with torch.no_grad():
        m(torch.randn(5, 6, 3))
        m(torch.randn(3, 6, 3), last=1)  # block 0 only (a forward that stops early)
    st = cc.loop_stats(m)
    assert len(st["per_block"]) == 1 and st["blocks_not_run"] == [1, 2, 3]
    assert cc.loop_counts(m).tolist() == [1, 1, 1]
    with torch.no_grad():
        m(torch.randn(1, 6, 3))
    assert cc.loop_stats(m)["blocks_not_run"] == [] and cc.loop_counts(m).tolist() == [1]


class Up(nn.Module):
    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.fc = nn.Linear(a, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Pyramid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_dim = 8
        self.patch_embed = nn.Linear(3, 8)
        self.blocks = nn.ModuleList([Up(8, 8), Up(8, 16), Up(16, 16)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch_embed(x)
        for b in self.blocks:
            h = b(h)
        return h


@pytest.mark.parametrize("scope, where", [("block", r"block 1 \(Up\)"), ((0, 2), r"span \(0, 2\)"),
                                          ((1, 3), r"span \(1, 3\)"), ("stack", r"span \(0, 3\)")])
def test_t16_loop_width_changing_block_is_a_shape_error(scope: object, where: str) -> None:
    torch.manual_seed(0)
    m = Pyramid()
    cc.graft_looped_blocks(m, max_loops=3, scope=scope, latent_channels=3)
    with torch.no_grad(), pytest.raises(ShapeError, match=where + r".*cannot re-enter"):
        m(torch.randn(2, 5, 3))


def test_t16_loop_width_changing_span_without_iter_embed_is_a_shape_error() -> None:
    torch.manual_seed(0)
    m = Pyramid()
    cc.graft_looped_blocks(m, max_loops=2, scope=(0, 2), latent_channels=3, iter_embed=False)
    with torch.no_grad(), pytest.raises(ShapeError, match="cannot re-enter"):
        m(torch.randn(2, 5, 3))
    cc.set_loops(m, 1)  # one loop: nothing re-enters, the backbone runs
    with torch.no_grad():
        assert m(torch.randn(2, 5, 3)).shape == (2, 5, 16)


@pytest.mark.parametrize("kwargs, err", [
    ({"max_loops": 0}, BackboneError), ({"max_loops": 2.7}, BackboneError),
    ({"max_loops": 10**7}, SizeLimitError), ({"inject": "bogus"}, BackboneError),
    ({"iter_norm": "layer"}, BackboneError), ({"iter_embed": 1}, BackboneError),
    ({"update": "damped", "damping": float("nan")}, BackboneError),
    ({"update": "damped", "damping": 0}, BackboneError),
    ({"gate_init_bias": float("nan")}, BackboneError), ({"gate_init_bias": float("inf")}, BackboneError),
    ({"update": "damped", "gate_init_bias": 0.5}, BackboneError)])
def test_t16_loop_direct_span_constructor_checks_options(kwargs: dict, err: type) -> None:
    args = {"max_loops": 2, **kwargs}
    n = args.pop("max_loops")
    with pytest.raises(err):
        LoopedSpan(Block(16), [], 0, 1, n, (16,), BlockIO(), **args)


@pytest.mark.parametrize("kwargs", [{"max_loops": 0}, {"step_adapter": "bogus"}, {"reenter": 3},
                                    {"update": "nope"}, {"gate_init_bias": float("nan")},
                                    {"step_adapter": "gated", "channels": None}])
def test_t16_loop_direct_model_loop_constructor_checks_options(kwargs: dict) -> None:
    args = {"max_loops": 2, "channels": 3, **kwargs}
    n, ch = args.pop("max_loops"), args.pop("channels")
    with pytest.raises(BackboneError):
        ModelLoop(n, "x", -1, ch, **args)


def test_t16_loop_direct_constructors_accept_valid_options() -> None:
    s = LoopedSpan(Block(16), [], 0, 1, 2, (16,), BlockIO(), update="damped", damping=0.25)
    assert s.damping == 0.25 and s(torch.randn(2, 5, 16)).shape == (2, 5, 16)
    assert ModelLoop(3, "x", -1, 3, step_adapter="gated", gate_init_bias=1.0).loop_gate[0].item() == 1.0


@pytest.mark.parametrize("update", ["damped", "replace"])
@pytest.mark.parametrize("scope", ["stack", "model"])
def test_t16_loop_gate_init_bias_without_gates_is_refused(update: str, scope: str) -> None:
    m = Tiny()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(BackboneError, match="gate_init_bias=0.5.*update='gated'"):
        cc.graft_looped_blocks(m, max_loops=2, scope=scope, update=update, gate_init_bias=0.5,
                               latent_channels=3)
    assert not any(isinstance(b, LoopedSpan) for b in m.blocks)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    parts, _ = cc.graft_looped_blocks(m, max_loops=2, scope=scope, update=update, gate_init_bias=0.0,
                                      latent_channels=3)
    assert parts[0].update == update


class Aux(Tiny):
    def forward(self, x: torch.Tensor) -> tuple:  # type: ignore[override]
        y = super().forward(x)
        return y, y.flatten(1).norm(dim=1), y.sum()  # per-sample aux of this pass, a batch scalar


def test_t16_loop_adaptive_exit_extras_come_from_each_samples_last_iteration() -> None:
    torch.manual_seed(0)
    m = Aux()
    (loop,), _ = cc.graft_looped_blocks(m, max_loops=3, scope="model", latent_channels=3)
    with torch.no_grad():
        loop.loop_gate.fill_(1.0)  # s <- f(x_t): the output is the last pass's
        x = torch.randn(4, 6, 3)
        cc.set_loops(m, 8, exit_tol=0.3)
        y, aux, total = m(x)
    counts = cc.loop_counts(m)
    assert len(set(counts.tolist())) > 1  # the samples did stop at different iterations
    assert torch.allclose(aux, y.flatten(1).norm(dim=1), atol=1e-5)
    assert total.dim() == 0  # not per sample: the last full-batch iteration's


class TupleBlock(nn.Module):
    """Returns the new state and a per-sample extra (its mean)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.inner = Block(d)

    def forward(self, x: torch.Tensor) -> tuple:
        y = self.inner(x)
        return y, y.mean(dim=(1, 2))


class TupleNet(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.embed_dim = d
        self.blocks = nn.ModuleList(TupleBlock(d) for _ in range(2))

    def forward(self, x: torch.Tensor) -> tuple:
        extra = None
        for b in self.blocks:
            x, extra = b(x)
        return x, extra


def test_t16_loop_span_adaptive_exit_extras_per_sample() -> None:
    torch.manual_seed(0)
    m = TupleNet()
    (span,), _ = cc.graft_looped_blocks(m, max_loops=3, scope="stack", latent_channels=16)
    with torch.no_grad():
        span.loop_gate.fill_(1.0)  # the output is the last pass's, as is the extra
        x = torch.randn(4, 5, 16) * torch.tensor([0.1, 1.0, 3.0, 10.0]).view(4, 1, 1)
        cc.set_loops(m, 8, exit_tol=0.3)
        y, extra = m(x)
    assert len(set(cc.loop_counts(m).tolist())) > 1
    assert torch.allclose(extra, y.mean(dim=(1, 2)), atol=1e-5)
