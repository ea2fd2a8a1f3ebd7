"""Topologies inside real backbones run the compiled plan (issue 12).

Tiny diffusers CogVideoX / Mochi and timm ViT models with random weights.  The reference is the
dense definition, written out in ``_backbone_setup.py`` with per-connection ``to_attention_mask`` matrices gathered to
the token order (what ``install_topology`` used to install as an ``(S, S)`` bias): per fn type one
softmax over the union of linked keys with ``log w`` biases, the types mixed per query by
``W_f(p)``, zero for a query with no key.  The reference replaces only the attention core inside
the very same processors, so both runs share the backbone's projections, norms and RoPE.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canvas_core.looping import get_adapter, graft_looped_blocks
from canvas_core.schema import CanvasTopology, Connection, TemporalFill

from tests.looping._backbone_setup import (  # noqa: F401
    _check_against_reference,
    causal_temporal,
    inputs,
    make,
    run,
    topologies,
    user_layout,
)

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")


@pytest.mark.parametrize("kind", ["cogvideox", "mochi", "vit"])
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topology=topologies(), period=st.sampled_from([1, 2]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_plan_equals_dense_reference_forward(kind, topology, period, dtype):
    _check_against_reference(kind, dtype, topology, period, grads=False)


@pytest.mark.parametrize("kind", ["cogvideox", "mochi", "vit"])
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topology=topologies(), period=st.sampled_from([1, 2]))
def test_plan_equals_dense_reference_gradients(kind, topology, period):
    _check_against_reference(kind, torch.float64, topology, period, grads=True)


@pytest.mark.parametrize("kernel", ["segments", "sparse", "dense"])
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["cogvideox", "mochi", "vit"]), topology=topologies(), period=st.sampled_from([1, 2]),
       grads=st.booleans())
def test_every_reference_kernel_mode_equals_dense_reference(kernel, kind, topology, period, grads):
    """The tiny models have few tokens, where the automatic choice is the dense mode: force each
    mode of the reference kernel (the sparse one with 8-token blocks)."""
    _check_against_reference(kind, torch.float64, topology, period, grads=grads, kernel=kernel)


@pytest.mark.parametrize("kind", ["cogvideox", "mochi", "vit"])
def test_edge_cases_match_reference(kind):
    """Queries with no key (isolated region / a connection to frames that do not exist), a single
    region, and a causal-temporal topology."""
    for top in (
        CanvasTopology(connections=[Connection("top", "top", t_src=0, t_dst=-5, temporal_fill=TemporalFill.DROP)]),
        CanvasTopology(connections=[Connection("extra", "extra")]),
        causal_temporal(["top", "bottom"]),
    ):
        _check_against_reference(kind, torch.float64, top, 1, grads=False)


@pytest.mark.parametrize("kind", ["cogvideox", "mochi", "vit"])
def test_no_key_gives_zero_attention_not_nan(kind):
    m = make(kind)
    kw = inputs(kind)
    ad = get_adapter(m) if False else None
    graft_looped_blocks(m, max_loops=2)
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, kw), 1)
    ad.install_topology(m, CanvasTopology(connections=[Connection("top", "top", t_src=0, t_dst=-9,
                                                                  temporal_fill=TemporalFill.DROP)]), tokens)
    with torch.no_grad():
        out = run(kind, m, kw)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind", ["cogvideox", "mochi", "vit"])
def test_dense_topology_equals_no_topology_and_removal_restores(kind):
    m = make(kind)
    kw = inputs(kind)
    with torch.no_grad():
        plain = run(kind, m, kw)
    graft_looped_blocks(m, max_loops=3)
    ad = get_adapter(m)
    tokens = ad.token_layout(m, kw)
    inst = ad.install_topology(m, CanvasTopology.dense(list(tokens.layout.regions)), tokens)
    assert all("sdpa" in k for k in inst.describe_kernels().values())
    with torch.no_grad():
        assert torch.equal(run(kind, m, kw), plain)
    ad.install_topology(m, CanvasTopology(connections=[Connection(r, r) for r in tokens.layout.regions]), tokens)
    with torch.no_grad():
        assert not torch.allclose(run(kind, m, kw), plain)
    ad.remove_topology(m)
    assert ad.installed_topology(m) is None
    with torch.no_grad():
        assert torch.equal(run(kind, m, kw), plain)
