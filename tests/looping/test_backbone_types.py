"""Topologies inside real backbones, part 2 (issue 12): non-softmax types run gated at zero, bad
inputs leave the model unchanged, the CUDA kernel, plugin types.  Set-up and the dense reference
are in ``_backbone_setup.py``.
"""

from __future__ import annotations

import pytest
import torch

from canvas_core.errors import BackboneError, CanvasError, ShapeError
from canvas_core.looping import get_adapter, graft_looped_blocks, load_loop_checkpoint, save_loop_checkpoint
from canvas_core.schema import CanvasLayout, CanvasTopology, Connection

from tests.looping._backbone_setup import (  # noqa: F401
    causal_temporal,
    inputs,
    make,
    run,
    user_layout,
    with_reference,
)

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")


NON_SOFTMAX = ["pooling", "gated", "perceiver", "mamba", "rwkv", "hyena", "canvas_read", "canvas_write"]


@pytest.mark.parametrize("kind", ["cogvideox", "mochi", "vit"])
def test_identity_at_init_with_non_softmax_types_at_every_loop_count(kind, tmp_path):
    m = make(kind)
    kw = inputs(kind)
    with torch.no_grad():
        plain = run(kind, m, kw)
    blocks, head = graft_looped_blocks(m, max_loops=4, freeze="full")
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, kw), 1)
    before = sum(p.numel() for b in blocks for p in b.loop_parameters())
    conns = [Connection(a, b) for a in ("top", "bottom", "extra") for b in ("top", "bottom", "extra")]
    conns += [Connection("top", "bottom", fn=f) for f in NON_SOFTMAX[:4]]
    dt = dict(t_src=0, t_dst=-1) if kind != "vit" else {}  # the ViT canvas has one frame
    conns += [Connection("bottom", "top", fn=f, **dt) for f in NON_SOFTMAX[4:]]
    inst = ad.install_topology(m, CanvasTopology(connections=conns), tokens)
    assert set(inst.module_types) == set(NON_SOFTMAX)
    for n in (1, 2, 3, 4):
        for b in blocks:
            b.set_loops(n)
        with torch.no_grad():
            assert torch.equal(run(kind, m, kw), plain), n
    # the modules are loop parameters: trainable under freeze="full", counted, saved, loaded
    extra = [p for b in blocks for n, p in b.named_loop_parameters() if n.startswith("canvas_fn.")]
    assert extra and all(p.requires_grad for p in extra)
    assert sum(p.numel() for b in blocks for p in b.loop_parameters()) == before + sum(p.numel() for p in extra)
    out = run(kind, m, kw)
    out.pow(2).mean().backward()
    gates = [p for b in blocks for n, p in b.named_loop_parameters() if n.endswith(".gate")]
    assert gates and all(g.grad is not None for g in gates) and any(g.grad.abs().sum() > 0 for g in gates)
    with torch.no_grad():
        for g in gates:
            g.fill_(0.3)
    path = tmp_path / "loops.safetensors"
    save_loop_checkpoint(blocks, head, str(path))
    with torch.no_grad():
        want = run(kind, m, kw)
        for g in gates:
            g.zero_()
    load_loop_checkpoint(blocks, head, str(path))
    with torch.no_grad():
        assert torch.equal(run(kind, m, kw), want)
        assert not torch.equal(want, plain)


def test_pooling_is_its_own_operator_not_softmax():
    kind = "vit"
    m = make(kind, torch.float64)
    kw = inputs(kind, torch.float64)
    blocks, _ = graft_looped_blocks(m, max_loops=1)
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, kw), 1)
    soft = [Connection("top", "top"), Connection("bottom", "bottom"), Connection("extra", "extra")]
    top = CanvasTopology(connections=soft + [Connection("top", "bottom", fn="pooling")])
    inst = ad.install_topology(m, top, tokens)
    assert inst.softmax_types == ("cross_attention",) and inst.module_types == ("pooling",)
    assert "pooling" not in inst.runner.soft_fns
    # the module output of the pooling group, with its gate opened, against the module run by hand
    target = ad.attention_targets(m)[0]
    bt = target.canvas_topology
    gm = bt.modules["pooling"]
    with torch.no_grad():
        gm.gate.fill_(1.0)
        x = torch.randn(2, tokens.seq_len, 32, dtype=torch.float64)
        got = bt.extra(x)
        idx = torch.tensor(tokens.token_index)
        mask = CanvasTopology(connections=[top.connections[-1]]).to_attention_mask(tokens.layout)[idx][:, idx] > 0
        q = torch.nonzero(mask.any(1)).flatten()
        k = torch.nonzero(mask.any(0)).flatten()
        # coefficient: W_pooling / (W_softmax + W_pooling) = 1/2 on every top query
        want = torch.zeros_like(x)
        want[:, q] = 0.5 * gm.module(x[:, q], x[:, k], x[:, k], key_mask=mask[q][:, k])
        torch.testing.assert_close(got, want)
        # and it is not what softmax attention over the same keys would give
        soft_ref = torch.zeros_like(x)
        soft_ref[:, q] = 0.5 * torch.nn.functional.scaled_dot_product_attention(x[:, q], x[:, k], x[:, k])
        assert not torch.allclose(got, soft_ref)


# --- bad inputs ------------------------------------------------------------------------------------
def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("kind", ["cogvideox", "mochi", "vit"])
def test_bad_inputs_raise_canvas_errors_and_leave_the_model_unchanged(kind):
    m = make(kind)
    kw = inputs(kind)
    blocks, _ = graft_looped_blocks(m, max_loops=2)
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, kw), 1)
    good = causal_temporal(["top", "bottom"])
    ad.install_topology(m, good, tokens)
    with torch.no_grad():
        before = run(kind, m, kw)
    keys = set(m.state_dict())
    installed = ad.installed_topology(m)
    lay = tokens.layout
    bad = [
        CanvasTopology(connections=[Connection("top", "nowhere")]),  # region not on the layout
        CanvasTopology(connections=[Connection("top", "bottom", fn="poolng")]),  # unknown type
    ]
    # a region that holds no token: the padding positions of the extra rows (none for this grid)
    for topo in bad:
        with pytest.raises(CanvasError) as e:
            ad.install_topology(m, topo, tokens)
        assert "#0" in str(e.value)
    # a layout of another grid
    with pytest.raises(BackboneError):
        ad.token_layout(m, kw, layout=CanvasLayout(T=lay.T + 1, spatial_shape=tuple(lay.spatial_shape),
                                                   d_model=lay.d_model, regions={"a": (0, 1, 0, 1, 0, 1)}))
    # a type that cannot run inside this backbone
    if kind == "mochi":
        with pytest.raises(BackboneError, match=r"#1 'extra' -> 'top'.*context stream"):
            ad.install_topology(m, CanvasTopology(connections=[Connection("top", "top"),
                                                               Connection("extra", "top", fn="pooling")]), tokens)
    assert ad.installed_topology(m) is installed and set(m.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(run(kind, m, kw), before)
    # a call whose sequence length differs from the installed layout
    if kind == "vit":
        other = dict(x=torch.randn(1, 3, 48, 48))
    elif kind == "cogvideox":
        other = dict(kw, hidden_states=kw["hidden_states"][:, :2], image_rotary_emb=None)
    else:
        other = dict(kw, hidden_states=kw["hidden_states"][:, :, :1])
    with pytest.raises(ShapeError, match="installed for"):
        with torch.no_grad():
            run(kind, m, other)


def test_non_softmax_type_over_mochi_text_is_refused_before_any_change():
    kind = "mochi"
    m = make(kind)
    kw = inputs(kind)
    graft_looped_blocks(m, max_loops=2)
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, kw), 1)
    keys = set(m.state_dict())
    with pytest.raises(BackboneError, match="cannot run inside 'mochi'"):
        ad.install_topology(m, CanvasTopology(connections=[Connection("top", "extra", fn="gated")]), tokens)
    assert ad.installed_topology(m) is None and set(m.state_dict()) == keys


def test_region_without_tokens_is_refused():
    m = make("vit")
    graft_looped_blocks(m, max_loops=2)
    ad = get_adapter(m)
    tokens = ad.token_layout(m)
    lay = tokens.layout
    H, W = tuple(lay.spatial_shape)
    gh = lay.regions["patches"].bounds[3]
    # the prefix rows hold 3 tokens (CLS + 2 registers) in a row of W=4 positions: the last is empty
    mine = CanvasLayout(T=1, spatial_shape=(H, W), d_model=lay.d_model,
                        regions={"patches": (0, 1, 0, gh, 0, W), "pad": (0, 1, H - 1, H, W - 1, W)})
    with pytest.raises(BackboneError, match="'pad' covers no token"):
        ad.install_topology(m, CanvasTopology(connections=[Connection("patches", "pad")]), tokens.with_layout(mine))
    assert ad.installed_topology(m) is None


# --- CUDA: the kernel the compiler resolves for the GPU (FlexAttention / xformers when present) ---
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["cogvideox", "mochi", "vit"])
def test_cuda_plan_kernel_equals_dense_reference(kind):
    m = make(kind).to("cuda")
    kw = {k: (v.to("cuda") if torch.is_tensor(v) else v) for k, v in inputs(kind).items()}
    if kind == "cogvideox":
        kw["image_rotary_emb"] = tuple(t.to("cuda") for t in kw["image_rotary_emb"])
    graft_looped_blocks(m, max_loops=2)
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, kw), 2)
    top = CanvasTopology(connections=[
        Connection("top", "top", t_src=0, t_dst=0), Connection("top", "bottom", t_src=0, t_dst=-1, weight=2.0),
        Connection("bottom", "top", fn="self_attention", weight=0.5), Connection("extra", "extra")])
    inst = ad.install_topology(m, top, tokens)
    res = inst.plan.resolutions
    assert all(r.device.startswith("cuda") for r in res.values())
    with torch.no_grad():
        got = run(kind, m, kw)
        with_reference(ad, m, top, tokens)
        want = run(kind, m, kw)
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-4)
    # gradients flow through the resolved CUDA kernel
    ad.install_topology(m, top, tokens)
    run(kind, m, kw).float().pow(2).mean().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.parameters())


def test_cogvideox_type_is_the_backbones_own_attention():
    """fn 'cogvideox' inside CogVideoX runs as the backbone's softmax attention: the same output as
    the same connections typed cross_attention (one group either way)."""
    kind = "cogvideox"
    m = make(kind)
    kw = inputs(kind)
    graft_looped_blocks(m, max_loops=2)
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, kw), 1)

    def topo(fn):
        return CanvasTopology(connections=[Connection("top", "top", t_src=0, t_dst=-1, fn=fn),
                                           Connection("bottom", "top", fn=fn), Connection("extra", "extra", fn=fn)])

    outs = []
    for fn in ("cross_attention", "cogvideox"):
        inst = ad.install_topology(m, topo(fn), tokens)
        assert inst.softmax_types == (fn,) and not inst.module_types
        with torch.no_grad():
            outs.append(run(kind, m, kw))
    assert torch.equal(outs[0], outs[1])


class _WideOnly(torch.nn.Module):
    """A plugin type that only builds at width >= 64 (the tiny backbones are 32 / 16 wide)."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        if d_model < 64:
            raise ValueError(f"needs d_model >= 64, got {d_model}")
        self.lin = torch.nn.Linear(d_model, d_model)

    def forward(self, queries, keys, values, key_mask=None):
        return self.lin(queries)


class _MeanOfKeys(torch.nn.Module):
    """A plugin type without key_mask (runs once per key set under the calling contract)."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.lin = torch.nn.Linear(d_model, d_model)

    def forward(self, queries, keys, values):
        return self.lin(values.mean(dim=1, keepdim=True)).expand_as(queries)


@pytest.mark.parametrize("kind", ["cogvideox", "vit"])
def test_plugin_types_run_gated_or_are_refused_naming_the_connection(kind):
    import canvas_core.plugins as P

    P.register_attention("h2_wide_only", _WideOnly)
    P.register_attention("h2_mean_of_keys", _MeanOfKeys)
    try:
        m = make(kind)
        kw = inputs(kind)
        with torch.no_grad():
            plain = run(kind, m, kw)
        blocks, _ = graft_looped_blocks(m, max_loops=3)
        ad = get_adapter(m)
        tokens = user_layout(ad.token_layout(m, kw), 1)
        dense = [Connection(a, b) for a in ("top", "bottom", "extra") for b in ("top", "bottom", "extra")]
        keys = set(m.state_dict())
        with pytest.raises(BackboneError, match=r"#9 'top' -> 'bottom' \(fn 'h2_wide_only'\).*needs d_model >= 64"):
            ad.install_topology(m, CanvasTopology(connections=dense + [Connection("top", "bottom", fn="h2_wide_only")]),
                                tokens)
        assert ad.installed_topology(m) is None and set(m.state_dict()) == keys
        inst = ad.install_topology(m, CanvasTopology(connections=dense + [
            Connection("top", "bottom", fn="h2_mean_of_keys"), Connection("bottom", "top", fn="h2_mean_of_keys")]), tokens)
        assert inst.module_types == ("h2_mean_of_keys",)
        with torch.no_grad():
            assert torch.equal(run(kind, m, kw), plain)  # gate at 0
            for b in blocks:
                for n, p in b.named_loop_parameters():
                    if n.endswith(".gate"):
                        p.fill_(1.0)
            assert not torch.allclose(run(kind, m, kw), plain)
    finally:
        P.unregister_attention("h2_wide_only")
        P.unregister_attention("h2_mean_of_keys")
