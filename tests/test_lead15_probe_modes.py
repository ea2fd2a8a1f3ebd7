"""The build probe of a plugin type runs under ``enable_grad`` (a layer built inside
``torch.no_grad()`` used to skip every read check), and an error a type raises at a real call shape
names the connection; a softmax-family type left out of ``softmax_types`` builds as its own module."""

import warnings

import pytest
import torch
from torch import nn

import canvas_core.plugins as P
from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection
from canvas_core.errors import AttentionContractError
from canvas_core.plugins import PluginHost, use_host

LAYOUT = CanvasLayout(T=2, H=2, W=8, d_model=8, regions={"a": (0, 2, 0, 1, 0, 8), "b": (0, 2, 1, 2, 0, 8)})


class _MixesBatch(nn.Module):
    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.p = nn.Linear(d_model, d_model)

    def forward(self, q, k, v):
        return q + self.p(v.mean((0, 1), keepdim=True)).expand_as(q)


class _WrongShapeOnLong(nn.Module):
    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()
        self.p = nn.Linear(d_model, d_model)

    def forward(self, q, k, v):
        out = q + self.p(v.mean(1, keepdim=True))
        return out[:, :1] if k.shape[1] > 6 else out


def _build(fn: str, cls) -> None:
    with use_host(PluginHost(entry_points=lambda: [])), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        P.register_attention(fn, cls)
        top = CanvasTopology(connections=[Connection("a", "a"), Connection("a", "b", t_src=0, fn=fn)])
        CanvasAttention(top, LAYOUT, d_model=8, n_heads=2)


@pytest.mark.parametrize("grad", [True, False])
def test_a_batch_mixing_type_is_refused_with_or_without_grad(grad):
    with torch.set_grad_enabled(grad), pytest.raises(AttentionContractError, match=r"^connection #1 'a' -> 'b'"):
        _build("mixes", _MixesBatch)


def test_a_wrong_shape_at_a_real_call_shape_names_the_connection():
    with pytest.raises(AttentionContractError, match=r"^connection #1 'a' -> 'b' .*at a shape the runtime calls it"):
        _build("wrong_long", _WrongShapeOnLong)


class _MeanNoParams(nn.Module):
    def __init__(self, d_model, n_heads=4, dropout=0.0):
        super().__init__()

    def forward(self, q, k, v):
        return q + v.mean(1, keepdim=True).expand_as(q)


def test_a_parameter_free_plugin_builds_on_the_meta_device():
    with use_host(PluginHost(entry_points=lambda: [])), warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        P.register_attention("mean_np", _MeanNoParams)
        top = CanvasTopology(connections=[Connection("a", "a"), Connection("a", "b", t_src=0, fn="mean_np")])
        layer = CanvasAttention(top, LAYOUT, d_model=8, n_heads=2)
    assert next(layer.parameters()).is_meta


def test_softmax_types_without_cross_attention_runs_it_as_its_own_module():
    lay = CanvasLayout(T=1, H=1, W=4, d_model=8, regions={"a": (0, 1, 0, 1, 0, 2), "b": (0, 1, 0, 1, 2, 4)})
    top = CanvasTopology(connections=[Connection("a", "b")])
    torch.manual_seed(0)
    layer = CanvasAttention(top, lay, d_model=8, n_heads=2, softmax_types=())
    assert layer.qkv is None  # no softmax kernel: the type's module with its own projections
    x = torch.randn(2, 4, 8)
    module = next(iter(layer.fn_modules.values()))
    a, b = lay.region_indices("a"), lay.region_indices("b")
    torch.testing.assert_close(layer(x)[:, a], module(x[:, a], x[:, b], x[:, b]))
