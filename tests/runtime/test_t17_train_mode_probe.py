"""The build-time read probe checks values in training mode too, and at the shapes the runtime
calls a type with; the conformance kit makes its value checks at a larger size as well.

Review: a plugin type normalising its output by a statistic of detached values (``o / o.detach()
.pow(2).mean().sqrt()``, over every row and sample of the call) only ``if self.training`` was
built (the training-mode twin was probed by gradient only), and one doing it only when
``o.shape[0] * o.shape[1] > 64`` passed the build and the kit, whose value probes ran at the tiny
probe size only.
"""

from __future__ import annotations

import sys
import types
import warnings

import pytest
import torch
from torch import nn

import canvas_core.plugins as P
from canvas_core import CanvasLayout, CanvasTopology, Connection
from canvas_core.dispatch import AttentionDispatcher
from canvas_core.errors import AttentionContractError
from canvas_core.plugins import PluginHost, use_host
from canvas_core.plugins.builtin import BUILTIN_ATTENTION
from canvas_core.plugins.resolve import build_attention
from canvas_core.testing import check_attention_type

torch.set_num_threads(1)

SMALL = CanvasLayout(T=2, H=4, W=4, d_model=16, regions={"a": (0, 2, 0, 2, 0, 4), "b": (0, 2, 2, 4, 0, 4)})
# 64 queries of b read a's 64 keys: a call of the runtime has batch x 64 rows
BIG = CanvasLayout(T=2, H=8, W=8, d_model=16, regions={"a": (0, 2, 0, 4, 0, 8), "b": (0, 2, 4, 8, 0, 8)})


@pytest.fixture(autouse=True)
def host():
    with use_host(PluginHost(entry_points=lambda: [])) as h:
        yield h


def _build(fn, layout=SMALL, dropout=0.0):
    topo = CanvasTopology(connections=[Connection(src="a", dst="a"), Connection(src="a", dst="b", fn=fn),
                                       Connection(src="b", dst="b")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AttentionDispatcher(topo, layout, d_model=16, n_heads=4, dropout=dropout)


class Reads(nn.Module):
    """Softmax attention over the keys it is given (zeros without keys); ``dropout`` on its output
    in training mode."""

    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.lin = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def read(self, q, k, v):
        if k.shape[1] == 0:
            return self.lin(q) * 0
        return self.drop(self.lin(torch.softmax(q @ k.transpose(1, 2) / k.shape[-1] ** 0.5, -1) @ v))

    def forward(self, q, k, v):
        return self.read(q, k, v)


def _detached_norm(o):
    return o / o.detach().pow(2).mean().sqrt()  # a statistic of every row and sample, no gradient


class DetachedNormTrain(Reads):
    def forward(self, q, k, v):
        o = self.read(q, k, v)
        return _detached_norm(o) if self.training else o


class DetachedNormBig(Reads):
    def forward(self, q, k, v):
        o = self.read(q, k, v)
        return _detached_norm(o) if o.shape[0] * o.shape[1] > 64 else o


def test_a_detached_statistic_only_in_training_is_refused():
    P.register_attention("norm_train", DetachedNormTrain)
    with pytest.raises(AttentionContractError, match=r"'norm_train'.*changed.*\(in training mode\)"):
        _build("norm_train")


def test_it_is_refused_with_dropout_too():
    # dropout draws its masks alike in the base and the changed call: only the inputs differ
    P.register_attention("norm_train_drop", DetachedNormTrain)
    with pytest.raises(AttentionContractError, match=r"'norm_train_drop'.*\(in training mode\)"):
        _build("norm_train_drop", dropout=0.3)


def test_it_is_refused_when_built_in_eval_mode():
    P.register_attention("norm_train_eval", lambda d_model, n_heads=4, dropout=0.0: DetachedNormTrain(d_model).eval())
    with pytest.raises(AttentionContractError, match=r"\(in training mode\)"):
        _build("norm_train_eval")


def test_an_honest_type_with_dropout_builds_in_training_mode():
    P.register_attention("reads_drop", Reads)
    layer = _build("reads_drop", dropout=0.5)
    assert layer.training


def test_a_detached_statistic_only_at_large_calls_is_refused_at_the_runtime_shape():
    P.register_attention("norm_big", DetachedNormBig)
    _build("norm_big")  # its calls stay small here: nothing to see
    with pytest.raises(AttentionContractError, match=r"'norm_big'.*changed.*at a shape the runtime calls it with"):
        _build("norm_big", BIG)


def test_an_honest_type_builds_at_the_large_layout():
    P.register_attention("reads_big", Reads)
    _build("reads_big", BIG, dropout=0.2)


def test_the_kit_sees_a_detached_statistic_at_large_calls():
    P.register_attention("norm_big_kit", DetachedNormBig)
    report = check_attention_type("norm_big_kit", d_model=16, raise_on_failure=False, strict=True)
    assert {"batch independence", "dependency exactness"} <= set(report.failed)
    assert "by value" in report.failed["batch independence"]
    assert "72 queries x 72 keys" in report.failed["dependency exactness"]
    P.register_attention("reads_kit", Reads)
    assert check_attention_type("reads_kit", d_model=16, raise_on_failure=False, strict=True).ok


@pytest.mark.parametrize("name", sorted(BUILTIN_ATTENTION))
def test_every_builtin_type_passes_the_probes_as_a_plugin(host, name):
    """A builtin type's class, registered from another module (so the build probes run on it),
    builds a layer in training mode with dropout, at the large layout."""
    cls = type(build_attention(host.lookup("attention", name), 16, n_heads=4, dropout=0.1))
    mod = sys.modules.setdefault("t17_plugin_copies", types.ModuleType("t17_plugin_copies"))
    copy = type(cls.__name__, (cls,), {"__module__": mod.__name__})
    P.register_attention(f"copy_{name}", copy)
    assert _build(f"copy_{name}", BIG, dropout=0.1).training
