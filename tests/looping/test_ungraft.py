"""ungraft_looped_blocks: the inverse of graft_looped_blocks. A grafted, unfrozen, trained backbone
round-trips through save_pretrained / from_pretrained (or a timm state dict) with every trained
weight; the loops come back with save/load_loop_checkpoint; save_pretrained while grafted refuses."""

import pytest
import torch

from canvas_core import ungraft_looped_blocks
from canvas_core.errors import BackboneError
from canvas_core.looping import get_adapter, graft_looped_blocks, load_loop_checkpoint, save_loop_checkpoint
from canvas_core.schema import CanvasTopology, Connection

from ._backbone_setup import first_input, inputs, make, run  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")


def _train(kind, m, blocks, head, kw, steps=3):
    params = [p for p in m.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.05)
    m.train()
    for _ in range(steps):
        opt.zero_grad()
        out = run(kind, m, kw)
        loss = out.float().pow(2).mean() + sum(b.loop_emb.pow(2).sum() * 0 for b in blocks)
        loss.backward()
        opt.step()
    with torch.no_grad():  # make the loops matter (gates open, embeddings non-zero)
        for b in blocks:
            b.loop_gate.fill_(0.5)
            b.loop_emb.normal_(0, 0.1)
    m.eval()


def _outputs(kind, m, blocks, kw, loops=(1, 2)):
    res = []
    with torch.no_grad():
        for n in loops:
            for b in blocks:
                b.set_loops(n)
            res.append(run(kind, m, kw))
    return res


@pytest.mark.parametrize("kind", ["cogvideox", "mochi"])
def test_diffusers_round_trip_keeps_trained_backbone(kind, tmp_path):
    m = make(kind)
    kw = inputs(kind)
    initial = {k: v.clone() for k, v in m.state_dict().items()}
    blocks, head = graft_looped_blocks(m, max_loops=2, freeze="none", latent_channels=4)
    _train(kind, m, blocks, head, kw)
    looped = _outputs(kind, m, blocks, kw)
    save_loop_checkpoint(blocks, head, tmp_path / "loops.safetensors")
    with pytest.raises(BackboneError, match="ungraft_looped_blocks"):
        m.save_pretrained(tmp_path / "grafted")
    assert not (tmp_path / "grafted").exists()

    with pytest.warns(UserWarning, match="first-iteration loop embeddings"):
        removed = ungraft_looped_blocks(m)
    assert removed == blocks
    proc = type(m.transformer_blocks[0].attn1.processor)
    assert proc.__module__.startswith("diffusers")  # the backbone's own processor again
    assert set(m.state_dict()) == set(initial)  # the plain layout, no `.original.`
    changed = [k for k in initial if "transformer_blocks" in k and not torch.equal(initial[k], m.state_dict()[k])]
    assert changed, "training must have changed the backbone blocks"
    with torch.no_grad():
        plain = run(kind, m, kw)
    m.save_pretrained(tmp_path / "plain")
    m2 = type(m).from_pretrained(tmp_path / "plain").eval()
    with torch.no_grad():
        assert torch.equal(run(kind, m2, kw), plain)

    blocks2, head2 = graft_looped_blocks(m2, max_loops=2, freeze="none", latent_channels=4)
    load_loop_checkpoint(blocks2, head2, tmp_path / "loops.safetensors")
    for a, b in zip(looped, _outputs(kind, m2, blocks2, kw)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_vit_state_dict_round_trip():
    kind = "vit"
    m = make(kind)
    kw = inputs(kind)
    attn_cls = type(m.blocks[0].attn)
    blocks, head = graft_looped_blocks(m, max_loops=2, freeze="none")
    _train(kind, m, blocks, head, kw, steps=2)
    with pytest.warns(UserWarning, match="first-iteration"):
        ungraft_looped_blocks(m)
    assert type(m.blocks[0].attn) is attn_cls and "beta" not in m.blocks[0].attn.__dict__
    with torch.no_grad():
        plain = run(kind, m, kw)
    fresh = make(kind, seed=5)
    fresh.load_state_dict(m.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(run(kind, fresh, kw), plain)
    graft_looped_blocks(m, max_loops=2)  # grafting again works


def test_topology_must_be_removed_explicitly_and_model_untouched():
    kind = "cogvideox"
    m = make(kind)
    kw = inputs(kind)
    with torch.no_grad():
        base = run(kind, m, kw)
    graft_looped_blocks(m, max_loops=2)
    ad = get_adapter(m)
    tokens = ad.token_layout(m, kw)
    ad.install_topology(m, CanvasTopology(connections=[Connection(r, r) for r in tokens.layout.regions]), tokens)
    with torch.no_grad():
        topo = run(kind, m, kw)
    with pytest.raises(BackboneError, match="remove_topology=True"):
        ungraft_looped_blocks(m)
    with torch.no_grad():
        assert torch.equal(run(kind, m, kw), topo)  # refused: nothing changed
    ungraft_looped_blocks(m, remove_topology=True)
    with torch.no_grad():
        assert torch.equal(run(kind, m, kw), base)


def test_not_grafted_refused():
    m = make("vit")
    with pytest.raises(BackboneError, match="not grafted"):
        ungraft_looped_blocks(m)
    graft_looped_blocks(m, max_loops=2)
    ungraft_looped_blocks(m)
    with pytest.raises(BackboneError, match="not grafted"):
        ungraft_looped_blocks(m)
    with pytest.raises(BackboneError):
        get_adapter(m)


@pytest.mark.parametrize("scope", [(0, 2), "stack", "model"])
def test_span_and_model_scopes_ungraft(scope):
    kind = "cogvideox"
    m = make(kind)
    kw = inputs(kind)
    with torch.no_grad():
        base = run(kind, m, kw)
    blocks = list(m.transformer_blocks)
    graft_looped_blocks(m, max_loops=2, scope=scope, gate_init_bias=0.5)
    ungraft_looped_blocks(m)
    assert list(m.transformer_blocks) == blocks and "canvas_loop" not in m._modules
    with torch.no_grad():
        assert torch.equal(run(kind, m, kw), base)


def test_custom_wrapper_class_keeping_original_is_ungrafted():
    from torch import nn

    from canvas_core.looping import LoopedBlockWrapper

    class MyWrapper(nn.Module):
        def __init__(self, block, i, max_loops, dim):
            super().__init__()
            self.original = block
            self.inner = LoopedBlockWrapper(nn.Identity(), i, max_loops, dim)

        def forward(self, x, *a, **k):
            return self.original(x, *a, **k)

    m = make("vit")
    blocks = list(m.blocks)
    graft_looped_blocks(m, max_loops=2, wrapper_class=MyWrapper)
    ungraft_looped_blocks(m)
    assert list(m.blocks) == blocks
