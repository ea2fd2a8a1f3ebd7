"""Which arguments the adaptive exit splits with the samples still running (audit of the loop
probes): a shared table whose length happens to equal the batch size is never cut, a per-sample
tensor inside a dict is, and an argument nothing declares is refused instead of guessed; plus the
float16 overflow of an extra iteration behind a zero gate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import canvas_core
from canvas_core.errors import BackboneError
from canvas_core.looping import graft_looped_blocks
from tests.looping._scope_setup import check_per_sample


class PBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln, self.fc = nn.LayerNorm(d), nn.Linear(d, d)

    def forward(self, x, pos):  # pos: (N, D), shared by every sample
        return x + torch.tanh(self.fc(self.ln(x + pos)))


class PNet(nn.Module):
    def __init__(self, d=8, n=4, derived=False):
        super().__init__()
        self.embed_dim, self.derived = d, derived
        self.patch_embed = nn.Linear(3, d)
        self.pos = nn.Parameter(torch.randn(n, d))
        self.blocks = nn.ModuleList(PBlock(d) for _ in range(2))
        self.proj_out = nn.Linear(d, 3)

    def forward(self, x):
        h = self.patch_embed(x)
        pos = self.pos * 1.0 if self.derived else self.pos  # a computed table is no Parameter
        for b in self.blocks:
            h = b(h, pos)
        return self.proj_out(h)


class MBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln, self.fc = nn.LayerNorm(d), nn.Linear(d, d)

    def forward(self, x, attention_kwargs=None):
        return x + torch.tanh(self.fc(self.ln(x))) * attention_kwargs["mask"]  # (B, N, 1) per sample


class MNet(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.embed_dim = d
        self.patch_embed = nn.Linear(3, d)
        self.blocks = nn.ModuleList(MBlock(d) for _ in range(2))
        self.proj_out = nn.Linear(d, 3)

    def forward(self, x, mask):
        h = self.patch_embed(x)
        for b in self.blocks:
            h = b(h, attention_kwargs={"mask": mask})
        return self.proj_out(h)


B = 4
SCALE = torch.tensor([0.01, 1.0, 3.0, 10.0]).view(B, 1, 1)  # samples that settle at different depths


def test_a_parameter_table_as_long_as_the_batch_is_passed_whole():
    torch.manual_seed(0)
    m = PNet(n=B).eval()
    graft_looped_blocks(m, max_loops=3, scope="stack", update="replace", latent_channels=3)
    check_per_sample(m, (torch.randn(B, B, 3) * SCALE,))


def test_an_undeclared_tensor_as_long_as_the_batch_is_refused_then_declared():
    torch.manual_seed(0)
    m = PNet(n=B, derived=True).eval()
    graft_looped_blocks(m, max_loops=3, scope="stack", update="replace", latent_channels=3)
    x = torch.randn(B, B, 3) * SCALE
    canvas_core.set_loops(m, 6, exit_tol=1e6)  # refused at the forward, whether the batch splits or not
    with pytest.raises(BackboneError, match=r"pos.*unbatched_args=\('pos',\)"):
        with torch.no_grad():
            m(x)
    canvas_core.set_loops(m, 3)
    with torch.no_grad():
        m(x)  # fixed depth never splits: nothing to declare
    torch.manual_seed(0)
    m = PNet(n=B, derived=True).eval()
    graft_looped_blocks(m, max_loops=3, scope="stack", update="replace", latent_channels=3,
                        unbatched_args="pos")
    check_per_sample(m, (x,))


def test_a_per_sample_tensor_inside_a_dict_goes_with_its_rows():
    torch.manual_seed(0)
    x = torch.randn(B, 5, 3) * SCALE
    mask = (torch.rand(B, 5, 1) > 0.3).float()
    m = MNet().eval()
    graft_looped_blocks(m, max_loops=3, scope="stack", update="replace", latent_channels=3)
    canvas_core.set_loops(m, 6, exit_tol=0.3)
    with pytest.raises(BackboneError, match=r"attention_kwargs\['mask'\].*batched_args"):
        with torch.no_grad():
            m(x, mask)
    torch.manual_seed(0)
    m = MNet().eval()
    graft_looped_blocks(m, max_loops=3, scope="stack", update="replace", latent_channels=3,
                        batched_args=("attention_kwargs",))
    check_per_sample(m, (x, mask))


def test_model_scope_forward_arguments_follow_the_same_rule():
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_dim = 8
            self.patch_embed = nn.Linear(3, 8)
            self.blocks = nn.ModuleList([PBlock(8)])
            self.proj_out = nn.Linear(8, 3)

        def forward(self, x, table, mask):
            return x + torch.tanh(self.proj_out(self.blocks[0](self.patch_embed(x), table))) * mask

    torch.manual_seed(0)
    x = torch.randn(B, B, 3) * SCALE
    table = torch.randn(B, 8)  # (N, D) with N == B: shared
    mask = (torch.rand(B, B, 1) > 0.3).float()
    m = Masked().eval()
    graft_looped_blocks(m, max_loops=3, scope="model", update="replace", latent_channels=3)
    canvas_core.set_loops(m, 6, exit_tol=0.3)
    with pytest.raises(BackboneError, match="scope='model'.*table"):
        with torch.no_grad():
            m(x, table, mask)
    torch.manual_seed(0)
    m = Masked().eval()
    graft_looped_blocks(m, max_loops=3, scope="model", update="replace", latent_channels=3,
                        batched_args=["mask"], unbatched_args=["table"])
    check_per_sample(m, (x, table, mask))


def test_row_declarations_are_checked_at_graft_time():
    for kw, match in [(dict(batched_args=3), "batched_args"), (dict(unbatched_args=[""]), "unbatched_args"),
                      (dict(batched_args="a", unbatched_args=("a",)), "both name"),
                      (dict(scope="block", batched_args=("a",)), "scope='block'")]:
        m = PNet()
        with pytest.raises(BackboneError, match=match):
            graft_looped_blocks(m, max_loops=2, latent_channels=3, **{"scope": "stack", **kw})
        assert "forward" not in m.__dict__ and type(m.blocks[0]) is PBlock


def test_index_rows_indexes_inside_dicts_and_named_tuples_but_never_a_parameter():
    from collections import namedtuple

    from canvas_core.looping.loop_engine import index_rows

    rows = torch.tensor([1, 3])
    Pair = namedtuple("Pair", "a b")
    p = nn.Parameter(torch.zeros(4, 2))
    out = index_rows({"m": torch.arange(4.0), "k": [torch.zeros(4, 2), 7], "p": p,
                      "t": Pair(torch.arange(4), torch.zeros(3))}, rows, 4)
    assert out["m"].tolist() == [1.0, 3.0] and out["k"][0].shape == (2, 2) and out["k"][1] == 7
    assert out["p"] is p and isinstance(out["t"], Pair) and out["t"].a.tolist() == [1, 3]
    assert out["t"].b.shape == (3,)


class Amp(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(d) * 200)

    def forward(self, x):
        return self.fc(x)


class AmpNet(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.embed_dim = d
        self.patch_embed = nn.Identity()
        self.blocks = nn.ModuleList([Amp(d)])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


@pytest.mark.parametrize("scope", ["block", "stack", "model"])
def test_a_float16_extra_iteration_that_overflows_stays_behind_its_zero_gate(scope):
    x = torch.full((1, 2, 8), 100.0, dtype=torch.float16)  # 2e4 once, inf the second time
    ref = AmpNet().half()(x)
    assert torch.isfinite(ref).all()
    m = AmpNet().half()
    graft_looped_blocks(m, max_loops=3, scope=scope, latent_channels=8)
    for n in (1, 2, 3):
        canvas_core.set_loops(m, n)
        with torch.no_grad():
            assert torch.equal(m(x), ref), n


def test_the_gated_update_keeps_the_formula_bitwise_at_nonzero_gates():
    from canvas_core.looping.loop_engine import gated_update

    g = torch.Generator().manual_seed(0)
    h, y = torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g)
    for a in (torch.tensor(0.37), torch.tensor(-1.5), 0.5, 1.0):
        assert torch.equal(gated_update(h, y, a), h + a * (y - h))
    y[0, 0] = float("inf")
    assert torch.equal(gated_update(h, y, torch.tensor(0.0)), h)
    a = torch.tensor(0.0, requires_grad=True)
    gated_update(h, torch.randn(64, 8, generator=g), a).sum().backward()
    assert a.grad != 0  # a closed gate still learns
