"""Canvases whose region names share a state key (``a.b`` and ``a__b``) keep those embeddings as
``modality_embeddings.r<k>``, ``k`` the index in the layout. Equal schemas may order the regions
otherwise, so a checkpoint records which region each such key is and loads by region; an older
file without the record loads only where the saved order gives every key to the same region."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import canvas_core as cc
from canvas_core import CanvasLayout, CanvasSchema, CanvasTopology, Connection
from canvas_core.errors import CheckpointError

torch.set_num_threads(1)

BOUNDS = {"a.b": (0, 2, 0, 1, 0, 2), "a__b": (0, 2, 1, 2, 0, 2), "c": (0, 1, 0, 1, 0, 1)}


def _schema(order):
    layout = CanvasLayout(T=2, H=2, W=2, d_model=8, regions={k: BOUNDS[k] for k in order}, allow_overlap=True)
    return CanvasSchema(layout=layout, topology=CanvasTopology(connections=[Connection("a.b", "a__b")]))


class World(nn.Module):
    def __init__(self, schema):
        super().__init__()
        self.canvas = cc.SpatiotemporalCanvas(schema.layout)
        self.head = nn.Linear(8, 3)


def _model(order, seed):
    torch.manual_seed(seed)
    s = _schema(order)
    m = World(s)
    with torch.no_grad():
        for k, name in enumerate(order):  # a value that says which region it belongs to
            m.canvas.region_embedding(name).fill_(float(k + 1) * 10)
    return m, s


def _embeddings(m):
    return {n: m.canvas.region_embedding(n).detach().clone() for n in BOUNDS}


SAVED, OTHER = ["a.b", "a__b", "c"], ["c", "a__b", "a.b"]
SWAPPED = ["a__b", "a.b", "c"]  # the same keys r0, r1, each another region's


@pytest.mark.parametrize("order", [SWAPPED, OTHER])
def test_a_file_loads_by_region_into_a_canvas_of_another_region_order(tmp_path, order):
    src, s_src = _model(SAVED, 0)
    dst, s_dst = _model(order, 1)
    assert s_src == s_dst and s_src.schema_hash() == s_dst.schema_hash()  # order is no part of the schema
    path = tmp_path / "m.safetensors"
    cc.save_canvas_checkpoint(src, path, s_src)
    header = cc.load_canvas_checkpoint(dst, path, s_dst)
    want, got = _embeddings(src), _embeddings(dst)
    assert all(torch.equal(want[n], got[n]) for n in BOUNDS)
    assert header["region_keys"] == {"canvas.modality_embeddings.r0": "a.b", "canvas.modality_embeddings.r1": "a__b",
                                     "canvas.modality_embeddings.c": "c"}
    assert cc.read_canvas_checkpoint_header(path)["region_keys"] == header["region_keys"]


def test_a_file_of_regions_with_their_own_keys_records_nothing(tmp_path):
    s = CanvasSchema(layout=CanvasLayout(T=2, H=2, W=2, d_model=8, regions={"x": (0, 2, 0, 1, 0, 2)}))
    path = tmp_path / "plain.safetensors"
    cc.save_canvas_checkpoint(cc.SpatiotemporalCanvas(s.layout), path, s)
    assert "region_keys" not in cc.read_canvas_checkpoint_header(path)


def _older_file(tmp_path, src, schema):
    """The file canvas-core wrote before it recorded the owners of the r<k> keys."""
    path = tmp_path / "new.safetensors"
    cc.save_canvas_checkpoint(src, path, schema)
    with safe_open(str(path), framework="pt") as fh:
        header, tensors = dict(fh.metadata()), {k: fh.get_tensor(k) for k in fh.keys()}
    del header["region_keys"]
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata=header)
    return old


@pytest.mark.parametrize("order", [SWAPPED, OTHER])
def test_an_older_file_into_another_region_order_is_refused_and_changes_nothing(tmp_path, order):
    src, s_src = _model(SAVED, 0)
    old = _older_file(tmp_path, src, s_src)
    dst, s_dst = _model(order, 1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        cc.load_canvas_checkpoint(dst, old, s_dst)
    text = str(err.value)
    assert "'a.b'" in text and "'a__b'" in text and "region order" in text and "save it again" in text
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())


def test_an_older_file_loads_into_its_own_region_order(tmp_path):
    src, s_src = _model(SAVED, 0)
    old = _older_file(tmp_path, src, s_src)
    dst, _ = _model(SAVED, 1)
    cc.load_canvas_checkpoint(dst, old, s_src)
    want, got = _embeddings(src), _embeddings(dst)
    assert all(torch.equal(want[n], got[n]) for n in BOUNDS)


def test_a_malformed_record_is_a_corrupt_header(tmp_path):
    src, s_src = _model(SAVED, 0)
    old = _older_file(tmp_path, src, s_src)
    with safe_open(str(old), framework="pt") as fh:
        header, tensors = dict(fh.metadata()), {k: fh.get_tensor(k) for k in fh.keys()}
    header["region_keys"] = json.dumps(["a.b"])
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=header)
    with pytest.raises(CheckpointError, match="corrupt header.*region_keys"):
        cc.load_canvas_checkpoint(_model(OTHER, 1)[0], bad, s_src)


@pytest.mark.parametrize("order", [SWAPPED, OTHER])
def test_plain_load_state_dict_maps_by_region_too(order):
    src, _ = _model(SAVED, 0)
    dst, _ = _model(order, 1)
    dst.load_state_dict(src.state_dict())
    want, got = _embeddings(src), _embeddings(dst)
    assert all(torch.equal(want[n], got[n]) for n in BOUNDS)
