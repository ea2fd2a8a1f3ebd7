"""A grafted model survives ``torch.save`` / ``torch.load`` and ``pickle`` in every scope.

``scope="model"`` routes ``model.forward`` through its loop; that forward was a method bound to
the model, which pickle rebuilds as ``getattr(model, "_looped_forward")``: the file was written but
could not be read back. The forward is now a picklable object, bound to the copy it is loaded as.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

import canvas_core
from tests.looping._scope_setup import make_net, randomize_loop_params

torch.set_num_threads(1)


def _grafted(scope):
    m = make_net()
    canvas_core.graft_looped_blocks(m, max_loops=3, scope=scope, latent_channels=3)
    for part in canvas_core.looping.scopes.loop_parts_of(m):
        if hasattr(part, "named_loop_parameters"):
            randomize_loop_params(part, torch.Generator().manual_seed(1))
    return m


def _torch_round_trip(m):
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("how", ["torch", "pickle", "deepcopy"])
@pytest.mark.parametrize("scope", ["model", "block", (1, 3)])
def test_grafted_model_round_trips_and_runs_identically(scope, how):
    m = _grafted(scope)
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        want = m(x)
    m2 = {"torch": _torch_round_trip, "pickle": lambda a: pickle.loads(pickle.dumps(a)),
          "deepcopy": copy.deepcopy}[how](m)
    with torch.no_grad():
        assert torch.equal(m2(x), want)
        canvas_core.set_loops(m2, 2)  # the copy's loop runs the copy, not the original
        y2 = m2(x)
        assert torch.equal(m(x), want)
    assert not torch.equal(y2, want)
    assert canvas_core.loop_counts(m2).tolist() == [2, 2]


def test_model_scope_copy_ungrafts_to_the_class_forward():
    m = _grafted("model")
    plain = make_net()
    x = torch.randn(2, 5, 3)
    m2 = _torch_round_trip(m)
    canvas_core.ungraft_looped_blocks(m2)
    assert "forward" not in m2.__dict__ and not hasattr(m2, "canvas_loop")
    with torch.no_grad():
        assert torch.equal(m2(x), plain(x))
    m3 = pickle.loads(pickle.dumps(m2))  # the ungrafted copy pickles as a plain model
    with torch.no_grad():
        assert torch.equal(m3(x), plain(x))
