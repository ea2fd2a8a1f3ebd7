"""``BackboneAdapter.input_guards``: the per-call input checks an adapter declares once, attached
by the base class at graft (``prepare``), install, removal and ungraft.  The ViT's: an empty
image batch is refused with ``ShapeError`` where timm fails on it with a bare reshape error
(``dynamic_img_size``, no position embedding; other ViTs run it grafted too), and while a
topology is installed the patch grid and the patch dropout are checked."""

from __future__ import annotations

import pytest
import timm
import torch

from canvas_core import ungraft_looped_blocks
from canvas_core.errors import BackboneError, ShapeError
from canvas_core.looping import graft_looped_blocks
from canvas_core.schema import CanvasTopology
from canvas_core.testing import one_thread_fixture
from canvas_plugin_vit.adapter import ViTAdapter

TOPO = CanvasTopology.dense(["patches", "cls"])


_one_thread = one_thread_fixture()


def _vit(**kw):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             embed_dim=32, num_heads=2, num_classes=5, **kw).eval()


def _hooks(*mods):
    """Forward pre-hooks per module, the graft's forward mark (``ForwardStart``) left out."""
    return [sum(type(h).__name__ != "ForwardStart" for h in m._forward_pre_hooks.values()) for m in mods]


def _calls_seen(mod, args, kwargs):
    """A guard's read of a test adapter: counts the calls it checks."""
    mod.__dict__["a6_calls"] = mod.__dict__.get("a6_calls", 0) + 1
    return {}


class CountingViT(ViTAdapter):
    """Declares one more check (on the head) while a topology is installed."""

    def input_guards(self, model, installed):
        extra = [(model.head, _calls_seen)] if installed else []
        return [*super().input_guards(model, installed), *extra]


@pytest.mark.parametrize("installed", [False, True])
@pytest.mark.parametrize("kw", [{"dynamic_img_size": True}, {"pos_embed": "none"}])
def test_empty_batch_is_refused_where_timm_fails(installed, kw):
    m = _vit(**kw)
    graft_looped_blocks(m, max_loops=2)
    ad = ViTAdapter()
    if installed:
        ad.install_topology(m, TOPO, ad.token_layout(m))
    with torch.no_grad():
        with pytest.raises(ShapeError, match=r"image batch is empty \(0 images\)"):
            m(torch.randn(0, 3, 32, 32))
        assert m(torch.randn(1, 3, 32, 32)).shape == (1, 5)


@pytest.mark.parametrize("installed", [False, True])
@pytest.mark.parametrize("kw", [{}, {"class_token": False, "global_pool": "avg"}])
def test_empty_batch_runs_where_timm_runs_it(installed, kw):
    m = _vit(**kw)
    with torch.no_grad():
        assert m(torch.randn(0, 3, 32, 32)).shape == (0, 5)  # the plain model runs it
    graft_looped_blocks(m, max_loops=2)
    ad = ViTAdapter()
    if installed:
        topo = TOPO if m.num_prefix_tokens else CanvasTopology.dense(["patches"])
        ad.install_topology(m, topo, ad.token_layout(m))
    with torch.no_grad():
        assert m(torch.randn(0, 3, 32, 32)).shape == (0, 5)


def test_base_applies_declared_guards_at_install_and_removes_them():
    m = _vit(patch_drop_rate=0.5)
    graft_looped_blocks(m, max_loops=2, adapter=CountingViT())
    ad = CountingViT()
    assert _hooks(m, m.patch_embed, m.patch_drop, m.head) == [1, 0, 0, 0]
    for _ in range(2):  # twice: still one check per module
        ad.install_topology(m, TOPO, ad.token_layout(m))
    assert _hooks(m, m.patch_embed, m.patch_drop, m.head) == [1, 1, 1, 1]
    with torch.no_grad():
        m(torch.randn(2, 3, 32, 32))
    assert m.head.__dict__["a6_calls"] == 1
    m.train()
    with pytest.raises(BackboneError, match="patch dropout"):
        m(torch.randn(2, 3, 32, 32))
    m.eval()
    ad.remove_topology(m)
    assert _hooks(m, m.patch_embed, m.patch_drop, m.head) == [1, 0, 0, 0]
    ungraft_looped_blocks(m)
    assert _hooks(m, m.patch_embed, m.patch_drop, m.head) == [0, 0, 0, 0]
    assert not any("canvas" in k for k in m.__dict__)
