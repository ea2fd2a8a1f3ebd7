"""A topology installed before the graft (``adapter.prepare`` + ``install_topology``, then
``graft_looped_blocks``): its gated modules must follow the blocks into their looped wrappers, so
they stay loop parameters (trainable under ``freeze="full"``), ``remove_topology`` removes them
and ungrafting gives back the plain backbone's exact state dict and output."""

from __future__ import annotations

import pytest
import torch

from canvas_core import ungraft_looped_blocks
from canvas_core.looping import graft_looped_blocks
from canvas_core.schema import CanvasTopology, Connection

from tests.looping._backbone_setup import inputs, make, run

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast")


def _adapter(kind):
    if kind == "vit":
        from canvas_plugin_vit.adapter import ViTAdapter

        return ViTAdapter()
    from canvas_plugin_mochi.adapter import MochiAdapter

    return MochiAdapter()


def _topology(kind):
    main, extra = ("patches", "cls") if kind == "vit" else ("video", "text")
    return CanvasTopology(connections=[
        Connection(main, main), Connection(main, extra), Connection(extra, extra), Connection(extra, main),
        Connection(main, main, fn="pooling"),
    ])


@pytest.mark.parametrize("kind,scope", [("vit", "block"), ("vit", (0, 2)), ("mochi", "block")])
def test_modules_of_a_topology_installed_before_the_graft_are_loop_parameters(kind, scope):
    m = make(kind)
    kw = inputs(kind)
    plain_keys = set(m.state_dict())
    with torch.no_grad():
        ref = run(kind, m, kw)
    ad = _adapter(kind)
    ad.prepare(m)
    ad.install_topology(m, _topology(kind), ad.token_layout(m, kw))
    with torch.no_grad():
        installed = run(kind, m, kw)
    parts, _ = graft_looped_blocks(m, max_loops=2, freeze="full", scope=scope)
    with torch.no_grad():
        assert torch.equal(run(kind, m, kw), installed)
    fn_params = [n for n, _ in m.named_parameters() if "canvas_fn." in n]
    assert fn_params and not any(".original." in n for n in fn_params)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert set(fn_params) <= trainable
    loop_names = {n for part in parts for n, _ in part.named_loop_parameters()}
    assert any("canvas_fn." in n for n in loop_names)

    ad.remove_topology(m)
    assert not [n for n in m.state_dict() if "canvas_fn" in n]
    ungraft_looped_blocks(m)
    assert set(m.state_dict()) == plain_keys
    with torch.no_grad():
        assert torch.equal(run(kind, m, kw), ref)


def test_failed_graft_keeps_the_installed_modules_on_the_plain_blocks(monkeypatch):
    import canvas_core.looping.graft as graft_mod

    m = make("vit")
    kw = inputs("vit")
    ad = _adapter("vit")
    ad.prepare(m)
    ad.install_topology(m, _topology("vit"), ad.token_layout(m, kw))
    keys = set(m.state_dict())
    with torch.no_grad():
        before = run("vit", m, kw)

    def fail_after_the_blocks_moved(model):  # freezing runs after every block is wrapped
        raise RuntimeError("boom")

    monkeypatch.setattr(graft_mod, "freeze_full", fail_after_the_blocks_moved)
    with pytest.raises(RuntimeError, match="boom"):
        graft_looped_blocks(m, max_loops=2)
    assert set(m.state_dict()) == keys  # canvas_fn back on the plain blocks, rolled back
    with torch.no_grad():
        assert torch.equal(run("vit", m, kw), before)
    ad.remove_topology(m)
    assert not [k for k in m.state_dict() if "canvas_fn" in k]
