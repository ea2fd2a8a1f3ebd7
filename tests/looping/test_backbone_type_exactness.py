"""Issue 23 inside grafted backbones (tiny CogVideoX and Mochi from diffusers and a timm ViT, random
weights): for every
registered attention type, on random topologies (offsets, periods, fills), the Jacobian pattern of
block 0's canvas attention (the installed processor / module: the backbone's own q/k/v for the softmax
family, the gated module for the others) lies inside the linked pattern of the dense reference,
gathered to token order; and every type learns: with only its parameters (and its branch's one
gate) trainable, a few Adam steps toward a random target move the model's output."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import canvas_core.plugins as P  # noqa: E402
import canvas_ref_dependency as dep  # noqa: E402

from tests.looping._backbone_setup import inputs, make, run, topologies, user_layout  # noqa: E402
from canvas_core.looping import get_adapter, graft_looped_blocks  # noqa: E402
from canvas_core.schema import CanvasTopology, Connection  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")

TYPES = sorted(P.list_attention_types())
SLOW = {"mamba", "hyena", "rwkv", "canvas_read", "canvas_write", "mixture"}


WIDTH = {"cogvideox": 16, "mochi": 16, "vit": 32}


def _grafted(topology, period, seed=0, kind="cogvideox"):
    m = make(kind, torch.float64)
    kw = inputs(kind, torch.float64)
    graft_looped_blocks(m, max_loops=1)
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, kw), period)
    ad.install_topology(m, topology, tokens)
    return m, kw, tokens


def _block0_attention(m, kw, kind="cogvideox"):
    """``x (1, S, D)`` in token order (CogVideoX: text, then video) -> block 0's attention output."""
    if kind == "vit":
        return get_adapter(m).attention_targets(m)[0]
    if kind == "mochi":  # video tokens first, then text (narrower: its first columns of x)
        return _mochi_block0_attention(m, kw)
    blk = m.transformer_blocks[0]
    attn = getattr(blk, "original", blk).attn1
    text = kw["encoder_hidden_states"].shape[1]
    rot = kw["image_rotary_emb"]

    def f(x):
        hid, enc = attn(hidden_states=x[:, text:], encoder_hidden_states=x[:, :text], image_rotary_emb=rot)
        return torch.cat([enc, hid], dim=1)

    return f


def _mochi_block0_attention(m, kw):
    blk = m.transformer_blocks[0]
    attn = getattr(blk, "original", blk).attn1
    _, _, F, H, W = kw["hidden_states"].shape
    p = m.config.patch_size
    rot = m.rope(m.pos_frequencies, F, H // p, W // p, device=m.pos_frequencies.device, dtype=torch.float32)
    video, text = F * (H // p) * (W // p), kw["encoder_hidden_states"].shape[1]
    d_text = m.config.pooled_projection_dim
    mask = torch.ones(1, text)

    def f(x):
        hid, enc = attn(hidden_states=x[:, :video], encoder_hidden_states=x[:, video:, :d_text],
                        image_rotary_emb=rot, attention_mask=mask)
        return torch.cat([hid, torch.nn.functional.pad(enc, (0, x.shape[-1] - d_text))], dim=1)

    return f


@pytest.mark.parametrize("kind", ["cogvideox", "mochi", "vit"])
@pytest.mark.parametrize("fn", TYPES)
def test_every_type_reads_only_linked_tokens_inside_a_backbone(fn, kind):
    n = 1 if kind == "vit" else 2 if fn in SLOW else 4
    # Mochi's text tokens live in a narrower stream that only the softmax family reads (other types
    # linking them are refused at install): there the type links the video regions
    regions = ("top", "bottom") if kind == "mochi" else ("top", "bottom", "extra")

    @settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck))
    @given(topo=topologies(regions=regions, types=(fn,)), period=st.sampled_from([1, 2]), seed=st.integers(0, 3))
    def check(topo, period, seed):
        m, kw, tokens = _grafted(topo, 1 if kind == "vit" else period, seed, kind)
        for name, p in m.named_parameters():
            if "canvas_fn." in name:  # open the zero gates (and gated's own), so no zero hides a read
                with torch.no_grad():
                    p.add_(0.3 * torch.randn_like(p))
        S = tokens.seq_len
        x = torch.randn(1, S, WIDTH[kind], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        got = dep.dependency_pattern(_block0_attention(m, kw, kind), x)
        idx = torch.tensor(tokens.token_index)
        linked = dep.linked_pattern(topo, tokens.layout)[idx][:, idx]
        eye = torch.eye(S, dtype=torch.bool)
        bad = dep.first_violation(got, linked | eye, lambda p: f"token {p}")
        assert bad is None, f"{fn} inside {kind}: {bad}; {topo.connections}"
        others = linked if fn in ("copy", "rwkv", "hyena", "mamba") else linked & ~eye  # see the canvas test
        if fn != "none" and bool(others.any()):
            assert bool((got & others).any()), f"{fn}: no linked token carries signal; {topo.connections}"

    check()


def _trainable_only(m, keep):
    params = []
    for name, p in m.named_parameters():
        p.requires_grad_(keep(name))
        if keep(name):
            params.append(p)
    return params


@pytest.mark.parametrize("kind", ["cogvideox", "mochi", "vit"])
@pytest.mark.parametrize("fn", [f for f in TYPES if f != "none"])
def test_every_type_learns_inside_a_backbone(fn, kind):
    """Only the type's parameters and its branch's gate free: 3 Adam steps move the output."""
    dense = [Connection(a, b) for a in ("top", "bottom", "extra") for b in ("top", "bottom", "extra")]
    dt = {} if kind == "vit" else dict(t_src=0, t_dst=-1)  # the ViT canvas has one frame
    topo = CanvasTopology(connections=dense + [Connection("top", "bottom", fn=fn, t_src=0, t_dst=0),
                                               Connection("bottom", "top", fn=fn, **dt)])
    m, kw, _ = _grafted(topo, 1, kind=kind)
    native = fn in get_adapter(m).installed_topology(m).softmax_types  # the backbone's own attention
    own = (lambda n: "to_q" in n or "to_k" in n or "qkv" in n) if native else (lambda n: "canvas_fn." in n)
    params = _trainable_only(m, own)
    assert params
    with torch.no_grad():
        before = run(kind, m, kw).clone()
    target = torch.randn_like(before)
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        (run(kind, m, kw) - target).pow(2).mean().backward()
        opt.step()
    with torch.no_grad():
        moved = float((run(kind, m, kw) - before).abs().max())
    assert moved > 1e-6, f"{fn} inside {kind}: 3 steps on its own parameters moved the output by {moved}"


def test_gated_has_one_gate_and_learns_from_step_one():
    dense = [Connection(a, b) for a in ("top", "bottom", "extra") for b in ("top", "bottom", "extra")]
    m, kw, _ = _grafted(CanvasTopology(connections=dense), 1)
    with torch.no_grad():
        plain = run("cogvideox", m, kw)  # a dense softmax topology alone: the backbone
    m, kw, _ = _grafted(CanvasTopology(connections=dense + [Connection("top", "bottom", fn="gated")]), 1)
    names = [n for n, _ in m.named_parameters() if "canvas_fn." in n]
    assert names and not any(n.endswith(".gate") for n in names)  # its own tanh(alpha) is the gate
    with torch.no_grad():
        assert torch.equal(run("cogvideox", m, kw), plain)  # still the backbone at initialisation
    assert _trainable_only(m, lambda n: "canvas_fn." in n)
    run("cogvideox", m, kw).pow(2).sum().backward()
    alpha = [p for n, p in m.named_parameters() if n.endswith("gate_alpha")]
    assert alpha and all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in alpha)
    report = get_adapter(m).installed_topology(m).report()
    assert "one gate: the type's own" in report and "learns from step 1" in report


def test_report_flags_a_branch_that_cannot_learn():
    class Dead(torch.nn.Module):  # two stacked zero gates: every gradient of the branch is 0
        def __init__(self, d_model, n_heads=4, dropout=0.0):
            super().__init__()
            self.a = torch.nn.Parameter(torch.zeros(()))
            self.b = torch.nn.Parameter(torch.zeros(()))
            self.p = torch.nn.Linear(d_model, d_model)

        def forward(self, queries, keys, values):
            return self.a * self.b * self.p(values.mean(1, keepdim=True)).expand_as(queries)

    P.register_attention("t23_dead", Dead)
    try:
        dense = [Connection(a, b) for a in ("top", "bottom", "extra") for b in ("top", "bottom", "extra")]
        topo = CanvasTopology(connections=dense + [Connection("top", "bottom", fn="t23_dead")])
        m, kw, _ = _grafted(topo, 1)
        report = get_adapter(m).installed_topology(m).report()
        assert "NO GRADIENT AT INIT" in report
        assert "#9" in report and "no parameter of 't23_dead' receives a gradient at initialisation" in report
    finally:
        P.unregister_attention("t23_dead")


def test_plugin_type_that_breaks_the_contract_is_refused_at_install_model_unchanged():
    from canvas_core.errors import BackboneError

    class WrongShape(torch.nn.Module):
        def __init__(self, d_model, n_heads=4, dropout=0.0):
            super().__init__()
            self.p = torch.nn.Linear(d_model, d_model)

        def forward(self, queries, keys, values):
            return self.p(values.mean(1, keepdim=True))  # (B, 1, D): broadcastable, wrong

    class MixesRows(WrongShape):
        def forward(self, queries, keys, values):  # reads other rows of a stacked call
            return self.p(queries) + values.mean(dim=(0, 1), keepdim=True)

    m = make("cogvideox", torch.float64)
    kw = inputs("cogvideox", torch.float64)
    graft_looped_blocks(m, max_loops=1)
    ad = get_adapter(m)
    tokens = user_layout(ad.token_layout(m, kw), 1)
    keys = set(m.state_dict())
    dense = [Connection(a, b) for a in ("top", "bottom", "extra") for b in ("top", "bottom", "extra")]
    for name, cls, msg in (("t23_bb_shape", WrongShape, r"returned shape \(2, 1, 16\)"),
                           ("t23_bb_mixes", MixesRows, "reads outside the linked keys")):
        P.register_attention(name, cls)
        try:
            topo = CanvasTopology(connections=dense + [Connection("top", "bottom", fn=name, t_src=0, t_dst=0)])
            with pytest.raises(BackboneError, match=rf"connection #9 'top' -> 'bottom' \(fn '{name}'\).*{msg}"):
                ad.install_topology(m, topo, tokens)
            assert ad.installed_topology(m) is None and set(m.state_dict()) == keys
        finally:
            P.unregister_attention(name)


def test_report_says_a_constant_branch_has_nothing_to_learn():
    # ``none`` outputs 0, so the block's gate on it never gets a gradient: the report must not
    # claim it learns, and must not flag a deliberate no-op as broken either
    dense = [Connection(a, b) for a in ("top", "bottom", "extra") for b in ("top", "bottom", "extra")]
    m, kw, _ = _grafted(CanvasTopology(connections=dense + [Connection("top", "bottom", fn="none")]), 1)
    row = [line for line in get_adapter(m).installed_topology(m).report().splitlines() if line.startswith("none")]
    assert row and "constant output (0): nothing to learn" in row[0]
    assert "learns from step 1" not in row[0] and "NO GRADIENT AT INIT" not in row[0]
    run("cogvideox", m, kw).pow(2).sum().backward()
    gates = [p for n, p in m.named_parameters() if "canvas_fn.none" in n]
    assert all(p.grad is None or not bool(p.grad.any()) for p in gates)  # what the report says


def test_a_parameter_free_type_with_an_output_is_reported_as_learning_through_its_gate():
    class MeanOfValues(torch.nn.Module):  # no parameter of its own, a real output
        def __init__(self, d_model, n_heads=4, dropout=0.0):
            super().__init__()

        def forward(self, queries, keys, values):
            return values.mean(1, keepdim=True).expand_as(queries)

    P.register_attention("t23_mean", MeanOfValues)
    try:
        dense = [Connection(a, b) for a in ("top", "bottom", "extra") for b in ("top", "bottom", "extra")]
        m, kw, _ = _grafted(CanvasTopology(connections=dense + [Connection("top", "bottom", fn="t23_mean")]), 1)
        report = get_adapter(m).installed_topology(m).report()
        row = [line for line in report.splitlines() if line.startswith("t23_mean")]
        assert row and "learns from step 1" in row[0] and "nothing to learn" not in row[0]
        run("cogvideox", m, kw).pow(2).sum().backward()
        gates = [p for n, p in m.named_parameters() if "canvas_fn.t23_mean" in n]
        assert gates and all(p.grad is not None and bool(p.grad.any()) for p in gates)  # it does learn
    finally:
        P.unregister_attention("t23_mean")


@pytest.mark.parametrize("how", ["detached", "unused", "zeroed"])
def test_report_flags_a_type_whose_own_parameters_get_no_gradient_behind_the_blocks_gate(how):
    # the block's gate starts at 0 and gets a gradient of its own: the module's parameters must
    # be checked with the gate taken as open, or a type that can never learn reads "learns"
    class Frozen(torch.nn.Module):
        def __init__(self, d_model, n_heads=4, dropout=0.0):
            super().__init__()
            self.p = torch.nn.Linear(d_model, d_model)

        def forward(self, queries, keys, values):
            m = values.mean(1, keepdim=True)
            out = m @ self.p.weight.detach().T if how == "detached" else m
            return queries + out.expand_as(queries)

    class Zeroed(Frozen):  # its parameters are used, but every gradient they get is 0
        def forward(self, queries, keys, values):
            return queries + (self.p(values.mean(1, keepdim=True)) * 0).expand_as(queries)

    name = f"t23_frozen_{how}"
    P.register_attention(name, Zeroed if how == "zeroed" else Frozen)
    try:
        dense = [Connection(a, b) for a in ("top", "bottom", "extra") for b in ("top", "bottom", "extra")]
        m, kw, _ = _grafted(CanvasTopology(connections=dense + [Connection("top", "bottom", fn=name)]), 1)
        report = get_adapter(m).installed_topology(m).report()
        row = [line for line in report.splitlines() if line.startswith(name)]
        assert row and "NO GRADIENT AT INIT" in row[0] and "learns from step 1" not in row[0]
        why = ("own module receives a gradient, even with its gate open" if how == "zeroed"
               else "does not depend on its parameters")
        assert "#9: inside 'cogvideox': " in report and why in report
        run("cogvideox", m, kw).pow(2).sum().backward()  # what the report says: the module's own stay at 0
        own = [p for n, p in m.named_parameters() if f"canvas_fn.{name}." in n and not n.endswith("gate")]
        assert own and all(p.grad is None or not bool(p.grad.any()) for p in own)
    finally:
        P.unregister_attention(name)
