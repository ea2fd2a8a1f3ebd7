"""Adaptive exit with per-sample tensors held inside objects (canvas_core/looping/exit_rows.py).

A dataclass holding a ``(B, N, 1)`` mask was neither split when declared in ``batched_args`` (the
block got the whole mask for fewer rows: a raw RuntimeError, or a block that broadcasts got
silently wrong rows) nor refused when undeclared.  Now a declared dataclass is rebuilt with its
indexed fields, and anything the rule cannot cut is refused with a BackboneError naming it.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import canvas_core
from canvas_core.errors import BackboneError
from canvas_core.looping import graft_looped_blocks
from tests.looping._scope_setup import check_per_sample
from canvas_core.looping.loop_engine import index_rows, row_plan

B = 4
SCALE = torch.tensor([0.01, 1.0, 3.0, 10.0]).view(B, 1, 1)  # samples that settle at different depths


@dataclasses.dataclass
class Ctx:
    mask: torch.Tensor
    scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class Derived:
    mask: torch.Tensor
    ones: torch.Tensor = dataclasses.field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "ones", self.mask.sum(1))


@dataclasses.dataclass
class Checked:
    mask: torch.Tensor
    batch: int

    def __post_init__(self):
        if self.mask.shape[0] != self.batch:
            raise ValueError(f"mask has {self.mask.shape[0]} rows, expected {self.batch}")


class Holder:  # a plain object: the rule cannot know how to rebuild it
    def __init__(self, mask):
        self.mask = mask
        self.me = self  # a cycle: the search must stop


class Blk(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln, self.fc = nn.LayerNorm(d), nn.Linear(d, d)

    def forward(self, x, ctx=None):
        m = ctx.mask
        if m.shape[0] != x.shape[0]:  # a block that tolerates a broadcastable mask: row 0 for all
            m = m[:1]
        return x + torch.tanh(self.fc(self.ln(x))) * m * getattr(ctx, "scale", 1.0)


class Net(nn.Module):
    def __init__(self, wrap, d=8):
        super().__init__()
        self.wrap = wrap
        self.embed_dim = d
        self.patch_embed = nn.Linear(3, d)
        self.blocks = nn.ModuleList(Blk(d) for _ in range(2))
        self.proj_out = nn.Linear(d, 3)

    def forward(self, x, mask):
        h = self.patch_embed(x)
        for b in self.blocks:
            h = b(h, ctx=self.wrap(mask))
        return self.proj_out(h)


def _net(wrap, **graft):
    torch.manual_seed(0)
    m = Net(wrap).eval()
    graft_looped_blocks(m, max_loops=3, scope="stack", update="replace", latent_channels=3, **graft)
    return m


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, 5, 3, generator=g) * SCALE, (torch.rand(B, 5, 1, generator=g) > 0.3).float()


def _forward(m, tol=0.3):
    canvas_core.set_loops(m, 6, exit_tol=tol)
    with torch.no_grad():
        return m(*_inputs())


@pytest.mark.parametrize("wrap", [Ctx, Derived], ids=["dataclass", "frozen_with_post_init"])
def test_a_declared_dataclass_is_split_with_the_rows(wrap):
    check_per_sample(_net(wrap, batched_args=("ctx",)), _inputs())


def test_an_undeclared_dataclass_holding_a_per_sample_tensor_is_refused():
    with pytest.raises(BackboneError, match=r"ctx\.mask \(shape \(4, 5, 1\)\).*batched_args=\('ctx',\)"):
        _forward(_net(Ctx))
    check_per_sample(_net(Ctx, batched_args=("ctx",)), _inputs())  # then declared, it works


def test_an_object_holding_a_per_sample_tensor_is_refused_declared_or_not():
    with pytest.raises(BackboneError, match=r"ctx\.mask.*cannot be split.*Holder.*dataclass"):
        _forward(_net(Holder))
    with pytest.raises(BackboneError, match=r"'ctx' \(Holder\), declared in batched_args.*ctx\.mask.*"
                                           r"does not rebuild"):
        _forward(_net(Holder, batched_args=("ctx",)))
    assert _forward(_net(Holder, unbatched_args=("ctx",))).shape == (B, 5, 3)  # said shared: passed whole


def test_a_dataclass_that_cannot_be_rebuilt_or_hides_a_per_sample_field_is_refused():
    @dataclasses.dataclass
    class Hidden:
        mask: torch.Tensor
        cache: torch.Tensor = dataclasses.field(init=False, default=None)  # filled after __init__

    def hidden(mask):
        h = Hidden(mask)
        h.cache = mask * 2
        return h

    with pytest.raises(BackboneError, match=r"ctx, a Hidden dataclass.*attribute 'cache'.*init=False.*does not hold those"):
        _forward(_net(hidden, batched_args=("ctx",)))
    def extra(mask):  # an attribute that is no field at all
        c = Ctx(mask)
        c.weights = mask + 1
        return c

    with pytest.raises(BackboneError, match=r"ctx, a Ctx dataclass.*attribute 'weights'.*unset"):
        _forward(_net(extra, batched_args=("ctx",)))
    with pytest.raises(BackboneError, match=r"ctx, a Checked dataclass.*could not be rebuilt.*ValueError: mask has"):
        _forward(_net(lambda mask: Checked(mask, B), batched_args=("ctx",)), tol=0.3)


def test_shared_contents_and_the_search_limits():
    rows = torch.tensor([0, 2])
    table, w = torch.randn(7, 8), nn.Linear(B, B)
    value = {"c": Ctx(torch.arange(4.0)), "t": (Ctx(table),)}
    out = index_rows(value, rows, B)
    assert out["c"].mask.tolist() == [0.0, 2.0] and out["c"].scale == 1.0
    assert out["t"][0] is value["t"][0]  # nothing to cut: the same object
    # a module's weights (a (4, 4) weight with B == 4) and a cycle are not per-sample tensors
    assert row_plan(["m", "h"], [w, Holder(table)], B, (), (), "here") == [False, False]
    assert row_plan(["c"], [Ctx(table)], B, (), (), "here") == [False]
