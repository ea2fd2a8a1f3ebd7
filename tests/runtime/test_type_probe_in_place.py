"""An attention type that writes into the tensors it is given is refused when a layer is built.

Audit: ``out = f(v); v.mul_(2)`` made ``AttentionDispatcher(...)`` raise torch's bare RuntimeError
("one of the variables needed for gradient computation has been modified by an inplace
operation") from the build-time probe, naming neither the type, the connection nor the fix; and a
type writing into an input its gradient does not need (``k.zero_()``) was built without a word.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import canvas_core.plugins as P
from canvas_core import CanvasLayout, CanvasTopology, Connection
from canvas_core.dispatch import AttentionDispatcher
from canvas_core.errors import AttentionContractError, CanvasError
from canvas_core.plugins import PluginHost, use_host
from canvas_core.testing import check_attention_type

torch.set_num_threads(1)

LAYOUT = CanvasLayout(T=2, H=4, W=4, d_model=16, regions={"a": (0, 2, 0, 2, 0, 4), "b": (0, 2, 2, 4, 0, 4)})


def _topology(fn):
    return CanvasTopology(connections=[Connection(src="a", dst="a"), Connection(src="a", dst="b", fn=fn),
                                       Connection(src="b", dst="b")])


def _build(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AttentionDispatcher(_topology(fn), LAYOUT, d_model=16, n_heads=4)


@pytest.fixture(autouse=True)
def host():
    with use_host(PluginHost(entry_points=lambda: [])) as h:
        yield h


class Base(nn.Module):
    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.lin = nn.Linear(d_model, d_model)


class ScalesValuesAfterUse(Base):
    def forward(self, queries, keys, values):
        out = self.lin(values).mean(1, keepdim=True) + queries
        values.mul_(2.0)  # autograd saved `values` for the backward of lin
        return out


class ZeroesKeys(Base):
    def forward(self, queries, keys, values):
        out = self.lin(queries) + values.mean(1, keepdim=True)
        keys.zero_()  # not needed for the gradient: autograd never notices
        return out


class ExactScalesQueries(Base):
    key_mask_exact = True

    def forward(self, queries, keys, values, key_mask=None):
        allowed = torch.ones(queries.shape[1], keys.shape[1], dtype=torch.bool) if key_mask is None else key_mask
        w = allowed.to(values.dtype)
        out = self.lin(w @ values / w.sum(-1, keepdim=True).clamp(min=1))
        queries.add_(1.0)
        return out * allowed.any(-1, keepdim=True)


class DecaysOwnWeight(Base):
    def forward(self, queries, keys, values):
        out = queries @ self.lin.weight + values.mean(1, keepdim=True)  # matmul saves the weight
        with torch.no_grad():
            self.lin.weight.mul_(0.5)  # a tensor its backward needs, but no input
        return out


class CopiesFirst(Base):
    def forward(self, queries, keys, values):
        values = values.clone()
        values.mul_(2.0)  # its own copy: fine
        return self.lin(values).mean(1, keepdim=True) + queries


# an exact type gets the probe's inputs themselves, leaves requiring grad: torch refuses the write
# at once ("a leaf Variable ... in-place operation"), before any version counter moves
@pytest.mark.parametrize("cls, written", [(ScalesValuesAfterUse, "its input 'values' in place"),
                                          (ZeroesKeys, "its input 'keys' in place"),
                                          (ExactScalesQueries, "in place a tensor autograd tracks")])
def test_a_type_writing_into_its_inputs_is_refused_naming_it(cls, written):
    P.register_attention("in_place_t", cls)
    with pytest.raises(AttentionContractError) as info:
        _build("in_place_t")
    msg = str(info.value)
    assert isinstance(info.value, CanvasError)
    assert msg.startswith("connection #1 'a' -> 'b' (fn 'in_place_t')")
    assert f"'in_place_t' ({cls.__name__}) modifies {written}" in msg
    assert "compute on a copy" in msg


def test_autograds_error_without_a_written_input_is_explained():
    P.register_attention("decays_t", DecaysOwnWeight)
    with pytest.raises(AttentionContractError, match=r"\(fn 'decays_t'\).*'decays_t' \(DecaysOwnWeight\) modifies "
                                                     r"in place a tensor autograd tracks.*torch: one of"):
        _build("decays_t")


def test_a_type_working_on_its_own_copies_is_built_and_left_without_hooks():
    P.register_attention("copies_t", CopiesFirst)
    layer = _build("copies_t")
    module = next(m for m in layer.modules() if isinstance(m, CopiesFirst))
    assert not module._forward_hooks and not module._forward_pre_hooks
    assert tuple(layer(torch.randn(1, LAYOUT.num_positions, 16)).shape) == (1, LAYOUT.num_positions, 16)


def test_the_kit_reports_the_same_refusal():
    P.register_attention("in_place_kit_t", ScalesValuesAfterUse)
    report = check_attention_type("in_place_kit_t", d_model=16, raise_on_failure=False)
    assert "modifies its input 'values' in place" in report.failed["dependency exactness"]
    assert "AttentionContractError" in report.failed["batch independence"]
    for check in ("batch independence", "gradients"):  # every check that calls it says the same
        assert "'in_place_kit_t' (ScalesValuesAfterUse) modifies its input 'values' in place" in report.failed[check]
