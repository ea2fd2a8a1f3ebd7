"""The causal read rule of the scan types: query ``i`` of ``Nq`` reads the state after key
``p(i) = ceil((i + 1) Nk / Nq) - 1``, so with at least one key every query reads something.

Under the earlier floor rule the first queries of a call with ``Nq > Nk`` read position ``-1``
and output zeros (a 6-position region reading a 1-position region: 5 of its 6 queries deaf).
The expected positions are computed here with :class:`fractions.Fraction`, independently of
:func:`canvas_core.attention._base.causal_read_index`."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

torch = pytest.importorskip("torch")

from canvas_core import create_attention  # noqa: E402
from canvas_core.attention._base import causal_read_index  # noqa: E402
from canvas_core.runtime.canvas_attention import CanvasAttention  # noqa: E402
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection, RegionSpec  # noqa: E402

D = 4
SIZES = range(1, 8)
#: every scan type (a type whose queries read at a causal position) and the kernels it runs on
SCANS = [("rwkv", {}), ("hyena", {}), ("mamba", {}), ("mamba", {"kernel": "mamba_torch"})]


def _expected(i: int, Nq: int, Nk: int) -> int:
    return math.ceil(Fraction((i + 1) * Nk, Nq)) - 1


def _module(name: str, options: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    m = create_attention(name, D, n_heads=1, **options).double()
    with torch.no_grad():  # no zero-initialised weight may hide a read
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def test_causal_read_index_is_the_ceiling_rule():
    for Nq in range(0, 10):
        for Nk in range(0, 10):
            got = causal_read_index(Nq, Nk).tolist()
            assert got == [_expected(i, Nq, Nk) for i in range(Nq)], (Nq, Nk)
            if Nk >= 1:
                assert all(0 <= p < Nk for p in got), (Nq, Nk, got)


def test_the_ceiling_rule_keeps_the_aligned_and_divisible_reads():
    for n in range(1, 9):
        assert causal_read_index(n, n).tolist() == list(range(n))
        assert causal_read_index(1, n).tolist() == [n - 1]
        for s in range(1, 5):
            assert causal_read_index(n, s * n).tolist() == [(i + 1) * s - 1 for i in range(n)]


@pytest.mark.parametrize("name,options", SCANS, ids=[f"{n}-{o.get('kernel', 'auto')}" for n, o in SCANS])
def test_every_query_reads_keys_up_to_its_read_position_and_no_later(name, options):
    """By gradient, for Nq, Nk in 1..7: query ``i`` depends on key ``p(i)`` (so on at least one
    key) and on no key after it.  Hyena's FFT convolutions leave round-off (~1e-16) on later keys:
    a key counts as read when its gradient is above 1e-9 of the row's largest."""
    m = _module(name, options)
    g = torch.Generator().manual_seed(1)
    for Nq in SIZES:
        for Nk in SIZES:
            q = torch.randn(1, Nq, D, generator=g, dtype=torch.float64)
            k, v = (torch.randn(1, Nk, D, generator=g, dtype=torch.float64, requires_grad=True) for _ in "kv")
            out = m(q, k, v)
            for i in range(Nq):
                gk, gv = torch.autograd.grad(out[0, i].sum(), (k, v), retain_graph=True)
                dep = (gk[0].abs() + gv[0].abs()).sum(-1)
                read = (dep > 1e-9 * dep.max()).nonzero().flatten().tolist() if dep.max() > 0 else []
                p = _expected(i, Nq, Nk)
                assert read, f"{name}: query {i} of Nq={Nq}, Nk={Nk} reads no key"
                assert 0 <= p < Nk and max(read) == p, (
                    f"{name}: query {i} of Nq={Nq}, Nk={Nk} reads keys {read}, expected up to {p}")


@pytest.mark.parametrize("name", ["rwkv", "hyena", "mamba"])
def test_a_region_reading_a_smaller_region_hears_it_from_every_query(name):
    """A 6-position region linked to a 1-position region of its frame: every one of the six
    queries depends on the key (under the floor rule only the last one did)."""
    layout = CanvasLayout(T=1, spatial_shape=(2, 6), d_model=D, regions={
        "a": RegionSpec((0, 1, 0, 1, 0, 6)), "k": RegionSpec((0, 1, 1, 2, 0, 1))})
    torch.manual_seed(0)
    layer = CanvasAttention(CanvasTopology(connections=[Connection("a", "k", fn=name)]), layout,
                            d_model=D, n_heads=1).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(1, layout.num_positions, D, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    key = layout.region_indices("k")[0]
    for row in layout.region_indices("a"):
        (gx,) = torch.autograd.grad(y[0, row].sum(), x, retain_graph=True)
        assert gx[0, key].abs().sum() > 0, f"{name}: query position {row} does not read key {key}"
