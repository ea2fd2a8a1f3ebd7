"""Save and load refuse a model whose canvas modules are out of date against their own schema.

A model built from a schema whose topology (or layout) was changed in place afterwards computes
with the old plan; ``save_canvas_checkpoint`` used to accept it and record the changed schema, so
the model rebuilt from the file computed something else (the round trip changed the outputs
silently).  A topology installed in a backbone was never compared with the schema either.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import canvas_core as cc
from canvas_core.errors import CheckpointError
from canvas_core.schema import CanvasLayout, CanvasSchema, CanvasTopology, Connection, RegionSpec
from canvas_core.testing import one_thread_fixture

_one_thread = one_thread_fixture()


def _schema() -> CanvasSchema:
    layout = CanvasLayout(T=4, spatial_shape=(3, 2), d_model=16,
                          regions={"video": (0, 4, 0, 2, 0, 2), "action": (0, 4, 2, 3, 0, 1)})
    topology = CanvasTopology(connections=[Connection("video", "video"),
                                           Connection("action", "video", t_src=0, t_dst=-1)])
    return CanvasSchema(layout=layout, topology=topology)


class WorldModel(nn.Module):
    def __init__(self, schema: CanvasSchema) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.canvas = cc.SpatiotemporalCanvas(schema.layout)
        self.attn = cc.CanvasAttention(schema.topology, schema.layout, n_heads=2)


def test_save_refuses_a_model_whose_topology_changed_after_it_was_built(tmp_path):
    s = _schema()
    m = WorldModel(s).eval()
    s.topology.connections.append(Connection("video", "action"))
    with pytest.raises(CheckpointError, match=r"save_canvas_checkpoint: the model's module 'attn' is out of date: "
                                              r"CanvasAttention was built from this CanvasTopology before"):
        cc.save_canvas_checkpoint(m, tmp_path / "w.st", s)
    assert not (tmp_path / "w.st").exists()


def test_save_refuses_a_model_whose_layout_changed_after_it_was_built(tmp_path):
    s = _schema()
    m = WorldModel(s).eval()
    s.layout.regions["action"] = RegionSpec((0, 4, 2, 3, 1, 2))
    with pytest.raises(CheckpointError, match=r"module 'canvas' is out of date: SpatiotemporalCanvas was built"):
        cc.save_canvas_checkpoint(m, tmp_path / "w.st", s)


def test_load_refuses_a_stale_model_even_when_the_file_has_the_changed_schema(tmp_path):
    s = _schema()
    stale = WorldModel(s).eval()
    s.topology.connections.append(Connection("video", "action"))
    cc.save_canvas_checkpoint(WorldModel(s).eval(), tmp_path / "w.st", s)  # built from the changed schema
    before = stale.attn.qkv.weight.detach().clone()
    with pytest.raises(CheckpointError, match="load_canvas_checkpoint: the model's module 'attn' is out of date"):
        cc.load_canvas_checkpoint(stale, tmp_path / "w.st", s)
    assert torch.equal(stale.attn.qkv.weight, before)


def test_the_round_trip_keeps_the_outputs_when_nothing_changed(tmp_path):
    s = _schema()
    m, x = WorldModel(s).eval(), torch.randn(1, 24, 16)
    cc.save_canvas_checkpoint(m, tmp_path / "w.st", s)
    h = cc.read_canvas_checkpoint_header(tmp_path / "w.st")["schema"]
    f = WorldModel(h).eval()
    torch.manual_seed(1)
    for p in f.parameters():
        p.data.normal_()
    cc.load_canvas_checkpoint(f, tmp_path / "w.st", h)
    assert torch.equal(f.attn(x), m.attn(x))


# --- a topology installed in a backbone ---------------------------------------------------------------
def _installed(conns=None):
    pytest.importorskip("timm")
    from canvas_core.looping import get_adapter, graft_looped_blocks
    from tests.looping._backbone_setup import inputs, make

    m, kw = make("vit"), inputs("vit")
    graft_looped_blocks(m, max_loops=2, freeze="none")
    ad = get_adapter(m)
    tokens = ad.token_layout(m, kw)
    topo = CanvasTopology(connections=conns or [Connection("patches", "patches"), Connection("cls", "cls"),
                                                Connection("cls", "patches")])
    ad.install_topology(m, topo, tokens)
    return m, kw, topo, tokens.layout


def test_save_and_load_compare_an_installed_topology_with_the_schema(tmp_path):
    m, _, topo, layout = _installed()
    same = CanvasSchema(layout=layout, topology=CanvasTopology(list(topo.connections)))
    cc.save_canvas_checkpoint(m, tmp_path / "ok.st", same)
    other = CanvasSchema(layout=layout, topology=CanvasTopology([Connection("patches", "patches")]))
    with pytest.raises(CheckpointError, match=r"save_canvas_checkpoint: the topology installed in the model .* is not "
                                              r"the schema's: 3 connections installed, 1 in the schema"):
        cc.save_canvas_checkpoint(m, tmp_path / "other.st", other)
    one, _, _, _ = _installed([Connection("patches", "patches")])  # the file's topology is installed in it
    cc.save_canvas_checkpoint(one, tmp_path / "one.st", other)
    before = [p.detach().clone() for p in m.parameters()]
    with pytest.raises(CheckpointError, match="load_canvas_checkpoint: the topology installed in the model"):
        cc.load_canvas_checkpoint(m, tmp_path / "one.st", other)
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_an_installed_topology_changed_after_the_install_is_refused(tmp_path):
    from canvas_core.errors import SchemaError
    from tests.looping._backbone_setup import run

    m, kw, topo, layout = _installed()
    y = run("vit", m, kw)
    schema = CanvasSchema(layout=layout, topology=topo)
    topo.connections.append(Connection("patches", "cls"))
    with pytest.raises(SchemaError, match=r"canvas topology installed in backbone 'vit' was built from this "
                                          r"CanvasTopology before .*install the changed topology again"):
        run("vit", m, kw)
    with pytest.raises(CheckpointError, match=r"\(installed topology\)' is out of date: .*install the changed "):
        cc.save_canvas_checkpoint(m, tmp_path / "w.st", schema)
    topo.connections.pop()
    assert torch.equal(run("vit", m, kw), y)
